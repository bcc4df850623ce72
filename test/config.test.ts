import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ConfigSchema, loadConfig, POOL_NAMES } from '../src/config.js';

describe('configuration', () => {
  it('has safe defaults with an empty environment', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      PORT: 3000,
      DATA_DIR: './.velro',
      INITIAL_CREDITS: 1000,
      ACCESS_TOKEN_TTL_SECONDS: 900,
    });
    expect(config.DATABASE_URL).toBeUndefined();
    expect(config.pools.authorization.statementTimeoutMs).toBeLessThan(
      config.pools.analytics.statementTimeoutMs,
    );
  });

  it('refuses to start in production without signing secrets', () => {
    expect(() => loadConfig({ NODE_ENV: 'production' })).toThrow(/JWT_SECRET/);
    const secrets = { JWT_SECRET: 'j'.repeat(32), MEDIA_SIGNING_SECRET: 'm'.repeat(32) };
    expect(loadConfig({ NODE_ENV: 'production', ...secrets }).NODE_ENV).toBe('production');
  });

  it('names every bad variable', () => {
    expect(() => loadConfig({ PORT: 'eighty', JWT_SECRET: 'short' })).toThrow(
      /PORT[\s\S]*JWT_SECRET|JWT_SECRET[\s\S]*PORT/,
    );
  });

  it('applies STATEMENT_TIMEOUT_MS to the request-path pools unless a pool says otherwise', () => {
    const config = loadConfig({
      STATEMENT_TIMEOUT_MS: '750',
      DB_POOL_WRITE_HEAVY_STATEMENT_TIMEOUT_MS: '900',
    });
    expect(config.pools.authorization.statementTimeoutMs).toBe(750);
    expect(config.pools.write_heavy.statementTimeoutMs).toBe(900);
    expect(config.pools.analytics.statementTimeoutMs).toBe(300_000);
  });
});

describe('README configuration table', () => {
  it('names every variable and every pool', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const row = (name: string) => new RegExp(`\\|\\s*\`${name}\`\\s*\\|`);
    const missing = Object.keys(ConfigSchema.properties).filter((key) => !row(key).test(readme));
    expect(missing).toEqual([]);
    for (const pool of POOL_NAMES) expect(readme).toMatch(row(pool));
  });
});
