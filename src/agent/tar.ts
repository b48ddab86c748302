import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { readFileBlocks } from '../archiver/input.js';

/**
 * A `file` source with several files or a directory is stored as a POSIX ustar stream, so
 * `kura restore … | tar x` gives the files back. Files are walked in byte order of their names
 * (deterministic, so unchanged files land in the same place and deduplicate); metadata that
 * changes without the data (owner names, access times) is left out.
 */
export interface TarEntry {
  abs: string;
  name: string;
  size: number;
  mode: number;
  mtime: number;
}

export async function collectEntries(paths: readonly string[]): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const visit = async (abs: string, name: string) => {
    const st = await fsp.stat(abs).catch((e: NodeJS.ErrnoException) => {
      throw new KuraError('E_INPUT', `cannot read ${abs}: ${e.message}`);
    });
    if (st.isDirectory()) {
      const names = (await fsp.readdir(abs)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      for (const n of names) await visit(path.join(abs, n), `${name}/${n}`);
    } else if (st.isFile()) {
      out.push({ abs, name, size: st.size, mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000) });
    }
  };
  for (const p of paths) await visit(path.resolve(p), path.basename(path.resolve(p)));
  return out;
}

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

export function tarHeader(e: { name: string; size: number; mode: number; mtime: number }): Buffer {
  const h = Buffer.alloc(512);
  let name = e.name;
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    // split at a "/" so the prefix fits 155 bytes and the rest 100
    let at = -1;
    for (let i = name.indexOf('/'); i > 0; i = name.indexOf('/', i + 1)) {
      if (Buffer.byteLength(name.slice(0, i)) <= 155 && Buffer.byteLength(name.slice(i + 1)) <= 100) {
        at = i;
        break;
      }
    }
    if (at < 0) throw new KuraError('E_INPUT', `file name too long for the archive: ${e.name}`);
    prefix = name.slice(0, at);
    name = name.slice(at + 1);
  }
  h.write(name, 0, 100, 'utf8');
  h.write(octal(e.mode, 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  if (e.size < 8 ** 11) h.write(octal(e.size, 12), 124, 'latin1');
  else {
    // GNU base-256 for files of 8 GiB and more
    h[124] = 0x80;
    let v = BigInt(e.size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }
  h.write(octal(e.mtime, 12), 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write('0', 156, 'latin1');
  h.write('ustar\u000000', 257, 'latin1');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 'latin1');
  return h;
}

export async function* tarStream(entries: readonly TarEntry[]): AsyncGenerator<Buffer> {
  for (const e of entries) {
    yield tarHeader(e);
    let n = 0;
    for await (const block of readFileBlocks(e.abs)) {
      n += block.length;
      if (n > e.size) break;
      yield block;
    }
    if (n !== e.size) throw new KuraError('E_INPUT_FAILED', `${e.abs} changed size while it was read (${e.size} → ${n} bytes); back it up when it is not being written, or use a sqlite/command source`);
    if (e.size % 512) yield Buffer.alloc(512 - (e.size % 512));
  }
  yield Buffer.alloc(1024);
}
