import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import openapiTS, { astToString, COMMENT_HEADER } from 'openapi-typescript';

/**
 * The client's types are produced here, in a package of their own: openapi-typescript 7 drives the
 * TypeScript 5 compiler API (ts.factory, the printer), which TypeScript 7 no longer ships. This
 * package depends on both, so npm installs them under tools/client-codegen/node_modules while the
 * repository itself keeps TypeScript 7. (It cannot live inside client/: npm does not install the
 * dependencies of a linked folder nested in another package's folder.)
 */

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPOSITORY_ROOT = join(HERE, '..', '..');
export const SCHEMA_FILE = join(REPOSITORY_ROOT, 'client', 'schema.d.ts');

const HEADER = `${COMMENT_HEADER.trimEnd()}
/* Generated from the OpenAPI document the service serves at /docs/json: \`npm run generate:client\`. */

`;

/** The OpenAPI document as TypeScript declarations (`paths`, `components`, `operations`), formatted. */
export async function renderSchema(document: object): Promise<string> {
  // openapi-typescript takes ownership of what it is given (it resolves $refs in place).
  const copy = structuredClone(document) as Parameters<typeof openapiTS>[0];
  const ast = await openapiTS(copy, { silent: true, alphabetize: false });
  return formatWithBiome(HEADER + astToString(ast), SCHEMA_FILE);
}

/** Formats TypeScript the way `biome check --write` does in this repository (reads stdin, no file written). */
export async function formatWithBiome(source: string, asPath: string): Promise<string> {
  const require = createRequire(join(REPOSITORY_ROOT, 'package.json'));
  const biome = require.resolve('@biomejs/biome/bin/biome');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [biome, 'format', `--stdin-file-path=${asPath}`], {
      cwd: REPOSITORY_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new Error(`biome format failed (${code}): ${Buffer.concat(err).toString('utf8')}`));
    });
    child.stdin.end(source);
  });
}
