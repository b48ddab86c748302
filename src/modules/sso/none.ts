import { z } from 'zod';
import { registerModule } from '../registry.js';

registerModule({
  kind: 'sso',
  type: 'none',
  description: 'operators are identified by their local account; no identity provider',
  options: z.strictObject({ type: z.literal('none') }),
});
