import { describe, expect, it } from 'vitest';
import { errorForLog } from '../src/logger.js';

describe('the error serializer of the logs', () => {
  it('keeps message, type, code and stack, and drops the database client hung on the error', () => {
    const error = Object.assign(new Error('terminating connection due to administrator command'), {
      code: '57P01',
      client: { connectionParameters: { user: 'velro', database: 'velro', host: 'db' }, _types: {} },
    });
    const logged = errorForLog(error) as Record<string, unknown>;
    expect(logged).toMatchObject({ type: 'Error', code: '57P01', message: error.message });
    expect(typeof logged.stack).toBe('string');
    expect(logged).not.toHaveProperty('client');
    expect(JSON.stringify(logged)).not.toContain('connectionParameters');
  });

  it('passes anything that is not an Error through unchanged', () => {
    expect(errorForLog('plain')).toBe('plain');
  });
});

describe('request loggers', () => {
  async function appLoggingTo(lines: Record<string, unknown>[], level: string) {
    const { default: Fastify, LogController } = await import('fastify');
    const { pino } = await import('pino');
    const { lazyRequestLogger } = await import('../src/platform/observability/request-logger.js');
    const logger = pino(
      { level },
      { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let children = 0;
    const child = logger.child.bind(logger);
    logger.child = ((...args: Parameters<typeof child>) => {
      children += 1;
      return child(...args);
    }) as typeof logger.child;
    const app = Fastify({
      loggerInstance: logger,
      childLoggerFactory: lazyRequestLogger,
      disableRequestLogging: true,
      logController: new LogController({ requestIdLogLabel: 'request_id' }),
    });
    app.get('/info', async (request) => {
      request.log.info({ step: 'info' }, 'an info line');
      return { ok: true };
    });
    app.get('/warn', async (request) => {
      request.log.warn({ step: 'warn' }, 'a warning');
      request.log.warn('and another');
      return { ok: true };
    });
    await app.ready();
    // Fastify's own children made at start-up are not the requests'.
    const atStart = children;
    return { app, children: () => children - atStart };
  }

  it('bind the request id to every line written at an enabled level, with one child per request', async () => {
    const lines: Record<string, unknown>[] = [];
    const { app, children } = await appLoggingTo(lines, 'warn');
    const res = await app.inject({ method: 'GET', url: '/warn', headers: { 'x-request-id': 'req-1' } });
    expect(res.statusCode).toBe(200);
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(2);
    for (const line of warnings) expect(line.request_id).toBe(res.headers['x-request-id'] ?? line.request_id);
    expect(new Set(warnings.map((l) => l.request_id)).size).toBe(1);
    expect(typeof warnings[0]?.request_id).toBe('string');
    expect(children()).toBe(1);
    await app.close();
  });

  it('make no child for a request that writes nothing at an enabled level, and write nothing for it', async () => {
    const lines: Record<string, unknown>[] = [];
    const { app, children } = await appLoggingTo(lines, 'warn');
    for (let i = 0; i < 5; i++)
      expect((await app.inject({ method: 'GET', url: '/info' })).statusCode).toBe(200);
    expect(lines.filter((l) => l.step === 'info')).toHaveLength(0);
    expect(children()).toBe(0);
    await app.close();
  });

  it('write info lines with the request id when info is enabled', async () => {
    const lines: Record<string, unknown>[] = [];
    const { app } = await appLoggingTo(lines, 'info');
    await app.inject({ method: 'GET', url: '/info' });
    const line = lines.find((l) => l.step === 'info');
    expect(line?.msg).toBe('an info line');
    expect(typeof line?.request_id).toBe('string');
    await app.close();
  });
});
