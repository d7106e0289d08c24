export { filterOf, startAdmin, type AdminHandle, type AdminListen, type AdminSources } from './server';
export { adminGet, adminSocketOf, PROXY_RUN_DIR } from './client';
export { prepareUpgrade, UpgradeError, type HandoverSide, type LiveAtHandover, type Prepared, type UpgradeLease } from './handover';
