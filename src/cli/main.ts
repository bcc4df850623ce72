import { parseArgs } from 'node:util';
import { createAdmin, grantCredits } from './accounts.js';
import { cache } from './cache.js';
import {
  asCliError,
  CliError,
  type Command,
  HELP_OPTION,
  JSON_OPTION,
  type OptionValues,
  Output,
  usageError,
} from './output.js';
import { check, explain, lookup, whois } from './playground.js';
import { seedData } from './seed.js';
import { serviceKey } from './service-keys.js';
import { status } from './status.js';

const migrate: Command = {
  name: 'migrate',
  summary: 'apply pending database migrations',
  help: `usage: velro migrate [--json]

Applies the migrations in migrations/ that have not run yet, each in its own transaction, under an
advisory lock (the server does the same on start). The database is DATABASE_URL, else the embedded
PostgreSQL in DATA_DIR.

  --json    print the result as JSON
`,
  options: { ...JSON_OPTION, ...HELP_OPTION },
  async run({ positionals, out }) {
    if (positionals.length > 0) throw usageError(`unexpected argument: ${positionals[0]}`);
    const { withDatabase } = await import('./database.js');
    const result = await withDatabase(async ({ applied, where }) => ({ applied, database: where }));
    out.result(
      result.applied.length > 0
        ? `applied ${result.applied.length} migration(s) to ${result.database}: ${result.applied.join(', ')}`
        : `${result.database} is up to date`,
      result,
    );
  },
};

const COMMANDS: Command[] = [
  status,
  check,
  explain,
  lookup,
  whois,
  migrate,
  createAdmin,
  grantCredits,
  serviceKey,
  cache,
  seedData,
];

const HELP = `usage: velro <command> [options]        (npm run velro -- <command> [options])

Administers a Velro deployment with the server's own configuration: DATABASE_URL (else the embedded
PostgreSQL in DATA_DIR), ARGON2_*, INITIAL_CREDITS. With the embedded database, a command joins the
PostgreSQL a running server started (and leaves it running); with no server running, it starts
its own and stops it when done. \`velro status\` shows the DATABASE_URL in use.

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(16)}${c.summary}`).join('\n')}

Every command takes --help and --json. Exit status: 0 done, 1 failed, 2 bad usage.
`;

const hint = (command?: string) => `(velro ${command ? `${command} ` : ''}--help for usage)`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const wantsJson = rest.includes('--json');
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(HELP);
    return name === undefined ? 2 : 0;
  }
  const out = new Output(wantsJson);
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    out.error(usageError(`unknown command: ${name}\n${hint()}`));
    return 2;
  }
  let values: OptionValues;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: rest,
      options: command.options,
      allowPositionals: true,
      strict: true,
    }));
  } catch (error) {
    out.error(usageError(`${error instanceof Error ? error.message : String(error)}\n${hint(name)}`));
    return 2;
  }
  if (values.help === true) {
    process.stdout.write(command.help);
    return 0;
  }
  try {
    await command.run({ values, positionals, out: new Output(values.json === true) });
    return 0;
  } catch (error) {
    const known = asCliError(error);
    if (known) {
      out.error(known.exitCode === 2 ? new CliError(`${known.message}\n${hint(name)}`, 2) : known);
      return known.exitCode;
    }
    out.error(new CliError(`${name} failed: ${error instanceof Error ? error.message : String(error)}`));
    if (process.env.VELRO_DEBUG && error instanceof Error && error.stack)
      process.stderr.write(`${error.stack}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
