// Regenerates fixtures/sample.sql: a small, deterministic municipal-style database export in
// pg_dump plain format (residents, households, tax assessments). `npm start` backs it up.
import { writeFileSync } from 'node:fs';
let s = 1;
const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0), s >>> 8);
const family = ['佐藤', '鈴木', '高橋', '田中', '伊藤', '渡辺', '山本', '中村', '小林', '加藤'];
const given = ['太郎', '花子', '一郎', '美咲', '健太', '陽菜', '翔', '結衣', '蓮', '葵'];
const town = ['本町', '栄町', '緑が丘', '桜台', '港町', '旭町'];
const out = [
  '--\n-- PostgreSQL database dump (kura sample)\n--\n\nSET statement_timeout = 0;\nSET client_encoding = \'UTF8\';\n',
  'CREATE TABLE public.households (id integer PRIMARY KEY, address text NOT NULL, created date NOT NULL);\n',
  'CREATE TABLE public.residents (id integer PRIMARY KEY, household_id integer REFERENCES public.households(id), name text NOT NULL, birth date NOT NULL, status text NOT NULL);\n',
  'CREATE TABLE public.tax_assessments (resident_id integer, fiscal_year integer, income bigint, tax bigint, PRIMARY KEY (resident_id, fiscal_year));\n\n',
  'COPY public.households (id, address, created) FROM stdin;\n',
];
const H = 4000, R = 10000;
for (let h = 1; h <= H; h++) out.push(`${h}\t${town[rnd() % 6]}${1 + (rnd() % 9)}丁目${1 + (rnd() % 30)}-${1 + (rnd() % 20)}\t20${10 + (rnd() % 14)}-0${1 + (rnd() % 9)}-1${rnd() % 9}\n`);
out.push('\\.\n\nCOPY public.residents (id, household_id, name, birth, status) FROM stdin;\n');
for (let r = 1; r <= R; r++) out.push(`${r}\t${1 + (rnd() % H)}\t${family[rnd() % 10]} ${given[rnd() % 10]}\t19${40 + (rnd() % 60)}-0${1 + (rnd() % 9)}-1${rnd() % 9}\t${rnd() % 50 === 0 ? 'moved-out' : 'resident'}\n`);
out.push('\\.\n\nCOPY public.tax_assessments (resident_id, fiscal_year, income, tax) FROM stdin;\n');
for (let r = 1; r <= R; r++) for (const y of [2022, 2023, 2024]) { const inc = rnd() % 9000000; out.push(`${r}\t${y}\t${inc}\t${Math.floor(inc * 0.1)}\n`); }
out.push('\\.\n\n--\n-- PostgreSQL database dump complete\n--\n');
writeFileSync(new URL('../fixtures/sample.sql', import.meta.url), out.join(''));
