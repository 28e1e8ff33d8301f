/** Backup media: sequential byte streams (file:, dir: cartridges), parsing, the media-root guard. */
export { parseMedium, formatMedium, type Medium, type MediumReader, type MediumWriter } from './medium.js';
export { openMediumReader, openMediumWriter, inspectMedium, type MediumSummary, type OpenMediumOptions } from './open.js';
export { resolveUnderRoots } from './roots.js';
export { openFileReader, openFileWriter } from './file-medium.js';
export { openDirReader, openDirWriter, backupIdsInDir, cartridgeFileName, LABEL_BYTES } from './dir-medium.js';
export { ReadableMediumReader, WritableMediumWriter } from './stream-medium.js';
