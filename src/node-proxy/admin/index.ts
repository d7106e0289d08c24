export { filterOf, startAdmin, type AdminListen, type AdminSources } from './server';
export { adminGet, adminSocketOf, PROXY_RUN_DIR } from './client';
