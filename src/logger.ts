import { pino, stdSerializers } from 'pino';
import type { Config } from './config.js';

/**
 * JSON logs with the request id on every line. Credentials never reach a log line: headers are
 * not logged at all, and signed media URLs lose their token.
 */
export function createLogger(config: Pick<Config, 'LOG_LEVEL'>) {
  return pino({
    level: config.LOG_LEVEL,
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers.cookie',
        '*.password',
        '*.refresh_token',
        '*.access_token',
        '*.key',
      ],
      censor: '[redacted]',
    },
    serializers: {
      err: errorForLog,
      req: (req: { method: string; url: string; ip?: string }) => ({
        method: req.method,
        url: redactUrl(req.url),
        ip: req.ip,
      }),
    },
  });
}

/**
 * pino's error serializer copies every enumerable property, and node-postgres hangs its whole
 * client (connection parameters, parser state, type tables) on errors of idle connections: a
 * multi-kilobyte line per lost connection. Keep what tells an operator what happened.
 */
export function errorForLog(error: unknown) {
  if (!(error instanceof Error)) return error;
  const { client: _client, ...rest } = stdSerializers.err(error) as Record<string, unknown>;
  return rest;
}

export function redactUrl(url: string): string {
  return url.replace(/(\/media\/)[^/?#]+/, '$1[redacted]');
}
