// Registers every built-in notification channel; import before building the config schema.
import './email.js';
import './webhook.js';
export { registeredChannels, registerChannel, filterOf, type Channel, type ChannelDefinition, type ChannelFilter } from './registry.js';
