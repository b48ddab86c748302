import { randomBytes } from 'node:crypto';
import { KuraError } from '../errors.js';
import type { StoreBackend } from './backend.js';

/**
 * Kura's immutability rests on conditional creates. Some S3 servers (and proxies in front of
 * them) drop `If-None-Match: *` and overwrite: write one probe object twice, conditionally; the
 * second must be refused. Throws E_STORE_UNSAFE when the store overwrote.
 */
export async function probeConditionalPut(store: StoreBackend): Promise<void> {
  const name = `probe/${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  const first = await store.putIfAbsent(name, Buffer.from('kura conditional-put probe 1\n'));
  let second: boolean;
  try {
    second = await store.putIfAbsent(name, Buffer.from('kura conditional-put probe 2\n'));
  } finally {
    await store.delete(name).catch(() => {});
  }
  if (!first || second) {
    throw new KuraError(
      'E_STORE_UNSAFE',
      `the store ${store.location} overwrote an existing object on a create that must be refused (PutObject with If-None-Match: *); kura relies on that to never clobber a pack or snapshot, so it will not use this store. Use an S3 server that honours conditional writes (Ceph RGW, MinIO, AWS S3), and make sure no proxy in between drops the If-None-Match header`,
      { store: store.location },
    );
  }
}
