// Registers every built-in module implementation; import before building the config schema.
import './sso/none.js';
import './sso/oidc.js';
import './sso/saml.js';
import './routing/static.js';
import './virtualization/none.js';
import './virtualization/groups.js';
export { moduleListSchema, moduleOf, modulesOf, moduleSchema, registeredModules, registerModule } from './registry.js';
