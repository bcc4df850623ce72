import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { relative } from 'node:path';
import { REPOSITORY_ROOT, renderSchema, SCHEMA_FILE } from '@velro/client-codegen';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { openRuntime } from '../src/runtime.js';

/**
 * `npm run generate:client`: builds the app in this process, exactly as `npm start` does (DATABASE_URL,
 * else the embedded PostgreSQL in DATA_DIR), asks it for /docs/json, and writes client/schema.d.ts.
 * `--check` writes nothing and exits 1 when the committed file differs.
 */
const check = process.argv.includes('--check');
const config = loadConfig({
  ...process.env,
  LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
  // The document does not depend on the secrets: throw-away ones, so that nothing is written to DATA_DIR.
  JWT_SECRET: process.env.JWT_SECRET ?? randomBytes(32).toString('hex'),
  MEDIA_SIGNING_SECRET: process.env.MEDIA_SIGNING_SECRET ?? randomBytes(32).toString('hex'),
  WORKER_ENABLED: 'false',
  CACHE_WARM_INTERVAL_SECONDS: '0',
  // Start-up work blocks the loop for a moment; no load shedding for this one request.
  OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: '0',
});
const runtime = await openRuntime(config, createLogger(config));
let document: object;
try {
  const app = await buildApp(runtime.deps);
  try {
    await app.ready();
    const response = await app.inject({ method: 'GET', url: '/docs/json' });
    if (response.statusCode !== 200)
      throw new Error(`/docs/json answered ${response.statusCode}: ${response.body}`);
    document = response.json();
  } finally {
    await app.close();
  }
} finally {
  await runtime.close();
}

const rendered = await renderSchema(document);
const name = relative(REPOSITORY_ROOT, SCHEMA_FILE);
const current = await readFile(SCHEMA_FILE, 'utf8').catch(() => null);
if (check) {
  if (current !== rendered) {
    process.stderr.write(
      `${name} is out of date with the served OpenAPI document: run npm run generate:client\n`,
    );
    process.exitCode = 1;
  } else {
    process.stdout.write(`${name} is up to date\n`);
  }
} else if (current === rendered) {
  process.stdout.write(`${name} is up to date\n`);
} else {
  await writeFile(SCHEMA_FILE, rendered);
  process.stdout.write(`wrote ${name} (${rendered.split('\n').length} lines)\n`);
}
