import type { StoreBackend } from '../../store/backend.js';

/**
 * A tenant's store on a vault node, fenced by the tenant's lease: every write first asks
 * `mayWrite` (a local check of the lease's trusted time, cheap) and every delete `mayDelete`
 * (that check again, and the lease re-read from the store) right before it is sent. A node
 * paused past its lease, or whose tenant was taken over, then writes and deletes nothing: the
 * check throws E_LEASE_LOST. Reads are not fenced (a restore reads immutable objects).
 */
export function withLeaseFence(inner: StoreBackend, fence: { mayWrite(): void; mayDelete(): Promise<void> }): StoreBackend {
  return {
    get location() {
      return inner.location;
    },
    get local() {
      return inner.local;
    },
    get: (n) => inner.get(n),
    getRange: (n, o, l) => inner.getRange(n, o, l),
    getRanges: (n, r, i) => inner.getRanges(n, r, i),
    list: (p) => inner.list(p),
    listWithSizes: (p) => inner.listWithSizes(p),
    stat: (n) => inner.stat(n),
    sync: () => inner.sync(),
    putIfAbsent: async (n, d) => {
      fence.mayWrite();
      return inner.putIfAbsent(n, d);
    },
    put: async (n, d) => {
      fence.mayWrite();
      return inner.put(n, d);
    },
    replace: async (n, d) => {
      fence.mayWrite();
      return inner.replace(n, d);
    },
    delete: async (n) => {
      await fence.mayDelete();
      return inner.delete(n);
    },
    close: () => inner.close?.(),
  };
}
