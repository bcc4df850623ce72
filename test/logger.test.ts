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
