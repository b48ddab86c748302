import { z } from 'zod';
import { registerModule } from '../registry.js';

const endpoint = z.strictObject({
  host: z.string().min(1).describe('vault address (name or IP)').meta({ examples: ['vault.peer-dc.example'] }),
  port: z.number().int().min(1).max(65535).default(2222).describe('vault SSH port'),
  user: z.string().min(1).optional().describe('SSH user, when the vault runs behind OpenSSH (command= mode)'),
  hostKeySha256: z.string().optional().describe('pinned host key fingerprint, "SHA256:..." as ssh-keygen -lf prints it'),
});

export const staticRoute = z.strictObject({
  endpoints: z.array(endpoint).min(1).describe('tried in order: the first that answers takes the transfer (failover)'),
  clientKey: z.string().optional().describe('path of the private key this host presents to the vault'),
  tenant: z.string().optional().describe('tenant name on the vault (default: the source tenant)'),
});

registerModule({
  kind: 'routing',
  type: 'static',
  description: 'a fixed table of destination names to ordered vault endpoints',
  options: z.strictObject({
    type: z.literal('static'),
    routes: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'route names are letters, digits, "-" and "_"'), staticRoute)
      .default({})
      .describe('destination name → endpoints; sources say `routes: [peer-dc]`, never an address')
      .meta({ exampleKey: 'peer-dc' }),
  }),
});
