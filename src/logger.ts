import { type DestinationStream, pino, stdSerializers } from 'pino';
import type { Config } from './config.js';

/**
 * JSON logs with the request id on every line. Credentials never reach a log line: headers are
 * not logged at all, and signed media URLs lose their token. `destination`: where lines go
 * (standard output by default; `prettyDestination()` for a person at a terminal).
 */
export function createLogger(config: Pick<Config, 'LOG_LEVEL'>, destination?: DestinationStream) {
  const options = {
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
  };
  return destination ? pino(options, destination) : pino(options);
}

/** Human-readable lines for a person: in development, when standard output is a terminal. */
export function wantsPrettyLogs(
  config: Pick<Config, 'NODE_ENV'>,
  stdout: { isTTY?: boolean } = process.stdout,
): boolean {
  return config.NODE_ENV === 'development' && stdout.isTTY === true;
}

/** pino-pretty, written synchronously so that nothing is lost when the process exits. */
export async function prettyDestination(output?: NodeJS.WritableStream): Promise<DestinationStream> {
  const { default: pretty } = await import('pino-pretty');
  return pretty({
    colorize: output === undefined,
    sync: true,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname',
    ...(output ? { destination: output } : {}),
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
