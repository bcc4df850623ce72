import { writeFile } from 'node:fs/promises';
import { renderPrometheusRules } from './prometheus-rules.js';

/** `npm run generate:alerts`: writes the Prometheus rules file from the one rule definition. */
export const ALERTS_FILE = new URL('../../../deploy/prometheus/alerts.yml', import.meta.url);

if (import.meta.url === `file://${process.argv[1]}`) {
  await writeFile(ALERTS_FILE, renderPrometheusRules());
  console.log(`wrote ${ALERTS_FILE.pathname}`);
}
