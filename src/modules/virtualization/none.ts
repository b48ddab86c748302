import { z } from 'zod';
import { registerModule } from '../registry.js';

registerModule({
  kind: 'virtualization',
  type: 'none',
  description: 'no shared hypervisor or backup device: sources start at their own schedule',
  options: z.strictObject({ type: z.literal('none') }),
  create: () => ({ groups: [] }),
});
