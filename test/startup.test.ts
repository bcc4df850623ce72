import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { serviceUrls, startupBanner, withoutPassword } from '../src/banner.js';
import { loadConfig } from '../src/config.js';
import { createLogger, prettyDestination, wantsPrettyLogs } from '../src/logger.js';

const secrets = { JWT_SECRET: 'j'.repeat(32), MEDIA_SIGNING_SECRET: 'm'.repeat(32) };

describe('where the service listens', () => {
  it('listens on this machine only in development unless HOST says otherwise; production listens everywhere', () => {
    expect(loadConfig({}).HOST).toBe('127.0.0.1');
    expect(loadConfig({ NODE_ENV: 'test' }).HOST).toBe('127.0.0.1');
    expect(loadConfig({ HOST: '0.0.0.0' }).HOST).toBe('0.0.0.0');
    expect(loadConfig({ NODE_ENV: 'production', ...secrets }).HOST).toBe('0.0.0.0');
    expect(loadConfig({ NODE_ENV: 'production', HOST: '10.1.2.3', ...secrets }).HOST).toBe('10.1.2.3');
  });

  it('gives URLs a person can open, even for a wildcard listen address', () => {
    expect(serviceUrls({ HOST: '0.0.0.0', PORT: 3000 })).toEqual({
      base: 'http://127.0.0.1:3000',
      api: 'http://127.0.0.1:3000/api/v1',
      docs: 'http://127.0.0.1:3000/docs',
      dashboard: 'http://127.0.0.1:3000/dashboard',
    });
    expect(serviceUrls({ HOST: '::', PORT: 80 }).base).toBe('http://[::1]:80');
    expect(serviceUrls({ HOST: '127.0.0.1', PORT: 0 }, 4123).docs).toBe('http://127.0.0.1:4123/docs');
  });
});

describe('the start-up banner', () => {
  it('names the API, docs, dashboard and database, never the password', () => {
    const urls = serviceUrls({ HOST: '127.0.0.1', PORT: 3000 });
    const banner = startupBanner({
      urls,
      database: 'postgres://postgres:s3cr%2Ft@127.0.0.1:54321/velro',
      databaseKind: 'embedded',
      redis: null,
      listening: '127.0.0.1:3000',
    });
    expect(banner).toContain('API          http://127.0.0.1:3000/api/v1');
    expect(banner).toContain('Docs         http://127.0.0.1:3000/docs');
    expect(banner).toContain('Dashboard    http://127.0.0.1:3000/dashboard');
    expect(banner).toContain('postgres://postgres:*****@127.0.0.1:54321/velro (embedded)');
    expect(banner).not.toContain('s3cr');
    expect(withoutPassword('redis://:pw@cache:6379/0')).toBe('redis://:*****@cache:6379/0');
    expect(withoutPassword('postgres://u@h/db')).toBe('postgres://u@h/db');
  });
});

describe('log format', () => {
  it('is human-readable only in development at a terminal, JSON otherwise', () => {
    expect(wantsPrettyLogs({ NODE_ENV: 'development' }, { isTTY: true })).toBe(true);
    expect(wantsPrettyLogs({ NODE_ENV: 'development' }, { isTTY: false })).toBe(false);
    expect(wantsPrettyLogs({ NODE_ENV: 'development' }, {})).toBe(false);
    expect(wantsPrettyLogs({ NODE_ENV: 'production' }, { isTTY: true })).toBe(false);
    expect(wantsPrettyLogs({ NODE_ENV: 'test' }, { isTTY: true })).toBe(false);
  });

  it('pretty lines keep the redaction of credentials', async () => {
    const output = new PassThrough();
    let text = '';
    output.on('data', (chunk: Buffer) => {
      text += chunk.toString();
    });
    const logger = createLogger(loadConfig({ LOG_LEVEL: 'info' }), await prettyDestination(output));
    logger.info({ body: { password: 'hunter2hunter2' } }, 'signed in');
    expect(text).toContain('INFO');
    expect(text).toContain('signed in');
    expect(text).toContain('[redacted]');
    expect(text).not.toContain('hunter2');
    expect(() => JSON.parse(text)).toThrow();
  });
});
