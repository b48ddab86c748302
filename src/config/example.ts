import { z } from 'zod';
import { stringify } from 'yaml';
import { configSchema } from './schema.js';

/**
 * `kura config example`: a commented YAML example generated from the schema's JSON Schema form,
 * so the reference can never drift from what `config check` accepts.
 */
type JS = {
  type?: string | string[];
  description?: string;
  default?: unknown;
  examples?: unknown[];
  properties?: Record<string, JS>;
  required?: string[];
  additionalProperties?: JS | boolean;
  oneOf?: JS[];
  anyOf?: JS[];
  items?: JS;
  enum?: unknown[];
  const?: unknown;
  exampleKey?: string;
};

function scalar(v: unknown): string {
  return stringify(v, { lineWidth: 0 }).trimEnd();
}

function typeHint(s: JS): string {
  if (s.const !== undefined) return scalar(s.const);
  if (s.enum) return s.enum.map((e) => scalar(e)).join(' | ');
  if (s.oneOf || s.anyOf) return (s.oneOf ?? s.anyOf)!.map(typeHint).join(' | ');
  return Array.isArray(s.type) ? s.type.join(' | ') : (s.type ?? 'value');
}

function variants(s: JS): JS[] | null {
  const v = s.oneOf ?? s.anyOf;
  if (!v) return null;
  // a module that may also be a list of them (modules.sso): shown as the single one
  const objects = v.flatMap((x) => (x.properties ? [x] : (variants(x) ?? [])));
  return objects.length > 0 && v.every((x) => x.properties || variants(x) || x.type === 'array') ? objects : null;
}

function emitObject(s: JS, indent: string, out: string[]): void {
  const props = s.properties ?? {};
  const required = new Set(s.required ?? []);
  for (const [key, p] of Object.entries(props)) emitProperty(key, p, required.has(key), indent, out);
  if (s.additionalProperties && typeof s.additionalProperties === 'object' && Object.keys(props).length === 0) {
    const key = s.exampleKey ?? 'name';
    out.push(`${indent}${key}:`);
    emitValue(s.additionalProperties, indent + '  ', out);
  }
}

function emitValue(s: JS, indent: string, out: string[]): void {
  const vs = variants(s);
  if (vs) {
    const types = vs.map((v) => scalar(v.properties?.type?.const ?? v.properties?.type?.enum?.[0])).join(', ');
    if (vs.length > 1) out.push(`${indent}# one of ${vs.length} kinds, chosen by \`type\`: ${types}; the first is shown`);
    emitObject(vs[0]!, indent, out);
    return;
  }
  emitObject(s, indent, out);
}

function emitProperty(key: string, p: JS, required: boolean, indent: string, out: string[]): void {
  if (p.description) for (const line of p.description.split('\n')) out.push(`${indent}# ${line}`);
  const isObject = p.properties || variants(p) || (p.additionalProperties && typeof p.additionalProperties === 'object');
  if (isObject) {
    const body: string[] = [];
    emitValue(p, indent + '  ', body);
    // an optional section without defaults is shown commented out as a whole
    const optional = !required && p.default === undefined;
    const lines = [`${indent}${key}:`, ...body];
    out.push(...(optional ? lines.map((l) => commentOut(l, indent)) : lines));
    return;
  }
  if (p.type === 'array' && p.items && (p.items.properties || variants(p.items))) {
    const body: string[] = [];
    emitValue(p.items, indent + '    ', body);
    const firstField = body.findIndex((l) => !l.trimStart().startsWith('#'));
    if (firstField >= 0) body[firstField] = `${indent}  - ${body[firstField]!.slice(indent.length + 4)}`;
    out.push(`${indent}${key}:`, ...body);
    return;
  }
  const value = p.examples?.[0] ?? p.default ?? p.const;
  if (value !== undefined) {
    const text = Array.isArray(value) ? `[${value.map((v) => scalar(v)).join(', ')}]` : typeof value === 'object' && value && Object.keys(value).length === 0 ? '{}' : scalar(value);
    const multi = text.includes('\n');
    const line = multi ? `${key}:\n${text.split('\n').map((l) => indent + '  ' + l).join('\n')}` : `${key}: ${text}`;
    const commented = !required && p.default === undefined && p.const === undefined;
    const [head, ...rest] = line.split('\n');
    out.push(`${indent}${commented ? '# ' : ''}${head}`, ...rest.map((l) => (commented ? commentOut(l, indent) : l)));
  } else {
    out.push(`${indent}${required ? '' : '# '}${key}: ${required ? '' : '<'}${typeHint(p)}${required ? '' : '>'}`);
  }
}

function commentOut(line: string, indent: string): string {
  const rest = line.slice(indent.length);
  return rest.startsWith('# ') ? line : `${indent}# ${rest}`;
}

export function configExample(): string {
  const js = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JS;
  const out = ['# kura configuration (generated from the schema by `kura config example`)', '# Lines starting with "# key:" are optional settings shown with their type.', ''];
  emitObject(js, '', out);
  return out.join('\n') + '\n';
}
