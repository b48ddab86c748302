import { z } from 'zod';
import { registerModule } from '../registry.js';

registerModule({
  kind: 'sso',
  type: 'none',
  description: 'operators are identified by their SSH keys and local accounts; no identity provider',
  options: z.strictObject({ type: z.literal('none') }),
  create: () => ({ signIn: false, provider: null }),
});
