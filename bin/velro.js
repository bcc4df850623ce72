#!/usr/bin/env node
// The `velro` admin CLI (src/cli/main.ts), run through tsx like the rest of the service.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
