import { type Command, HELP_OPTION, JSON_OPTION, usageError } from './output.js';

export const status: Command = {
  name: 'status',
  summary: 'URLs, database, Redis, versions, migrations and queue depth of this setup',
  help: `usage: velro status [--json]

Reports, with the server's own configuration (HOST, PORT, DATABASE_URL else the embedded
PostgreSQL in DATA_DIR, REDIS_URL or REDIS_SENTINELS or REDIS_CLUSTER_NODES):
  - the API, docs and dashboard URLs, and whether a server answers there
  - the DATABASE_URL in use (password included: it is yours to copy into psql); with the embedded
    database, whether it runs, its process and port. Nothing is started or stopped.
  - Redis: configured or not (one server, Sentinel or Cluster), answering or not
  - versions of Velro, Node.js and PostgreSQL
  - migrations applied and pending, and the generation queue's depth

  --json    print the report as JSON
`,
  options: { ...JSON_OPTION, ...HELP_OPTION },
  async run({ positionals, out }) {
    if (positionals.length > 0) throw usageError(`unexpected argument: ${positionals[0]}`);
    const { collectStatus, formatStatus } = await import('./status-work.js');
    const report = await collectStatus();
    out.result(formatStatus(report), report);
  },
};
