// Configuration search (AutoPEFT-style): re-exports only.
export { searchPeftConfig, evaluateSearchConfig } from './search'
export type { SearchPeftConfigOptions, SearchResult, TrialResult, TrialTrainerOptions } from './search'
export { applySearchConfig, checkSearchConfig } from './apply'
export { paretoFront, dominates } from './pareto'
export type { Objectives } from './pareto'
export { GROUP_METHODS, layerGroups, resolveSpace, uniformConfig, composeAdapters } from './space'
export type { GroupMethod, SearchConfig, SearchSpace } from './space'
