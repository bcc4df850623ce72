import type { PERMISSIONS, ResourceType } from '../modules/authz/types.js';
import { type Command, HELP_OPTION, integerOption, JSON_OPTION, stringOption, usageError } from './output.js';
import type { CheckArgs } from './playground-work.js';

/**
 * The authorization playground: the same facts and the same decision function as the API, run in
 * this process on the server's database (DATABASE_URL, else the embedded one, joined if a server
 * runs). An operator sees everything: unlike the API, nothing is hidden from the asker, so a denial
 * shows the facts it was decided on.
 */

const TYPES: readonly ResourceType[] = ['project', 'generation', 'team'];
const PERMISSION_LIST: Record<ResourceType, readonly string[]> = {
  project: ['view', 'edit', 'delete', 'manage'],
  generation: ['view', 'download', 'edit', 'delete'],
  team: ['view', 'manage', 'delete'],
} satisfies Record<ResourceType, (typeof PERMISSIONS)[ResourceType]>;

const SUBJECT_HELP = `  SUBJECT            a user's email (case-insensitive) or id`;
const PERMISSIONS_HELP = `permissions: project ${PERMISSION_LIST.project.join('|')}; generation ${PERMISSION_LIST.generation.join('|')};
             team ${PERMISSION_LIST.team.join('|')}`;

function resourceType(value: string): ResourceType {
  if (!(TYPES as readonly string[]).includes(value))
    throw usageError(`unknown resource type ${value} (${TYPES.join(', ')})`);
  return value as ResourceType;
}

function permissionFor(type: ResourceType, permission: string): string {
  if (!PERMISSION_LIST[type].includes(permission))
    throw usageError(`${type} has no permission ${permission} (${PERMISSION_LIST[type].join(', ')})`);
  return permission;
}

function checkArgs(positionals: string[], command: string): CheckArgs {
  if (positionals.length !== 3) {
    throw usageError(
      `say: velro ${command} SUBJECT PERMISSION TYPE:ID (got ${positionals.length} argument(s))`,
    );
  }
  const [subject, permission, target] = positionals as [string, string, string];
  const colon = target.indexOf(':');
  if (colon < 1) throw usageError(`the resource is TYPE:ID, e.g. project:8d3c…, not ${target}`);
  const type = resourceType(target.slice(0, colon));
  return {
    subject,
    permission: permissionFor(type, permission),
    resource: { type, id: target.slice(colon + 1) },
  };
}

export const check: Command = {
  name: 'check',
  summary: 'may SUBJECT do PERMISSION on TYPE:ID? (authorization playground)',
  help: `usage: velro check SUBJECT PERMISSION TYPE:ID [--json]

Asks the authorization engine, in this process and on the server's database, what POST
/api/v1/authz/check would answer for that subject: allowed or not, every permission held and how
(owner, project_owner, team:<role>, public). Exit status 0 whether allowed or not.

${SUBJECT_HELP}
  PERMISSION         ${PERMISSIONS_HELP}
  TYPE:ID            project:<id>, generation:<id> or team:<id>
  --json             print the answer as JSON

example: velro check alice@example.com edit project:8d3c3f1e-0d7b-4c59-9a57-5a0f7c1f2b11
`,
  options: { ...JSON_OPTION, ...HELP_OPTION },
  async run({ positionals, out }) {
    const args = checkArgs(positionals, 'check');
    const { runCheck, formatCheck } = await import('./playground-work.js');
    const answer = await runCheck(args);
    out.result(formatCheck(answer), answer);
  },
};

export const explain: Command = {
  name: 'explain',
  summary: 'which rule allows or denies, and on which facts',
  help: `usage: velro explain SUBJECT PERMISSION TYPE:ID [--json]

Like check, and says which rule of the authorization model decided and the facts it was applied to:
the resource (owner, project, team, visibility, deleted) and the subject's membership in the team
that matters. Unlike the API, facts are shown for a denial too: this is the operator's view.

${SUBJECT_HELP}
  PERMISSION         ${PERMISSIONS_HELP}
  TYPE:ID            project:<id>, generation:<id> or team:<id>
  --json             print the answer as JSON
`,
  options: { ...JSON_OPTION, ...HELP_OPTION },
  async run({ positionals, out }) {
    const args = checkArgs(positionals, 'explain');
    const { runExplain, formatExplain } = await import('./playground-work.js');
    const answer = await runExplain(args);
    out.result(formatExplain(answer), answer);
  },
};

export const lookup: Command = {
  name: 'lookup',
  summary: 'which resources of a type SUBJECT holds PERMISSION on',
  help: `usage: velro lookup SUBJECT PERMISSION TYPE [--limit N] [--cursor CURSOR] [--json]

Lists, newest first, the resources of TYPE (project, generation, team) on which the subject holds
the permission: what POST /api/v1/authz/lookup answers, with names.

${SUBJECT_HELP}
  PERMISSION         ${PERMISSIONS_HELP}
  TYPE               project, generation or team
  --limit N          1 to 100 (default 20)
  --cursor CURSOR    the next page (printed after a full page)
  --json             print the page as JSON
`,
  options: { limit: { type: 'string' }, cursor: { type: 'string' }, ...JSON_OPTION, ...HELP_OPTION },
  async run({ values, positionals, out }) {
    if (positionals.length !== 3) {
      throw usageError(`say: velro lookup SUBJECT PERMISSION TYPE (got ${positionals.length} argument(s))`);
    }
    const [subject, permission, typeName] = positionals as [string, string, string];
    const type = resourceType(typeName);
    const { runLookup, formatLookup } = await import('./playground-work.js');
    const page = await runLookup({
      subject,
      type,
      permission: permissionFor(type, permission),
      limit: integerOption(values, 'limit', 1, 100) ?? 20,
      cursor: stringOption(values, 'cursor'),
    });
    out.result(formatLookup(page), page);
  },
};

export const whois: Command = {
  name: 'whois',
  summary: "a user's account, teams (with roles) and projects",
  help: `usage: velro whois EMAIL [--json]

Shows the account (id, role, credits, active), the teams it belongs to with its role in each, and
the projects it owns or reaches through a team.

  EMAIL     the account (case-insensitive), or its id
  --json    print it as JSON
`,
  options: { ...JSON_OPTION, ...HELP_OPTION },
  async run({ positionals, out }) {
    if (positionals.length !== 1) throw usageError('say: velro whois EMAIL');
    const { runWhois, formatWhois } = await import('./playground-work.js');
    const report = await runWhois(positionals[0] as string);
    out.result(formatWhois(report), report);
  },
};
