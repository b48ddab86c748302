import { z } from 'zod';
import { registerStorage } from '../registry.js';
import { FsBackend } from './index.js';

registerStorage({
  type: 'fs',
  description: 'a local directory (the repository directory itself)',
  options: z.strictObject({ type: z.literal('fs') }),
  open: (_options, where) => new FsBackend(where.dir),
  probeConditionalCreate: false,
});
