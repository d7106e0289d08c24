export { filterOf, startAdmin, type AdminHandle, type AdminListen, type AdminSources } from './server';
export { adminGet, adminSocketOf, PROXY_RUN_DIR } from './client';
export { drainingSocketOf, drainingSockets, mergeFlows } from './draining';
export { prepareUpgrade, reportLines, ReportAssembler, UpgradeError, type HandoverSide, type LiveAtHandover, type PredecessorReports, type Prepared, type UpgradeLease } from './handover';
