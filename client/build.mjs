// `npm run build`: compiles the client to JavaScript and declarations in dist/, checked against the
// browser's library (DOM, no Node types) so that it works in a browser and in Node alike.
import { execFileSync } from 'node:child_process';
import { copyFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
let tsc;
try {
  tsc = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc');
} catch {
  console.error(
    'The client is built with TypeScript: run `npm install` here or at the repository root first.',
  );
  process.exit(1);
}

rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [tsc, '-p', join(here, 'tsconfig.json')], { stdio: 'inherit' });
// The generated types are a declaration file already: the compiler does not copy those.
copyFileSync(join(here, 'schema.d.ts'), join(dist, 'schema.d.ts'));
