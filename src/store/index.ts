// Registers every built-in storage backend; import before building the config schema or opening a store.
import './fs/definition.js';
import './s3/definition.js';
export { openStore, prepareStore, registeredStorage, registerStorage, storageSchema, verifyStore, FS_SPEC, type StorageSpec, type StoreScope } from './registry.js';
