import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isDatabaseUnavailable } from '../db/unavailable.js';
import { AppError, type FieldIssue } from './errors.js';

const CODE_BY_STATUS: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'method_not_allowed',
  406: 'not_acceptable',
  408: 'request_timeout',
  409: 'conflict',
  410: 'gone',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  416: 'range_not_satisfiable',
  422: 'unprocessable_entity',
  429: 'rate_limited',
  431: 'request_header_fields_too_large',
  503: 'service_unavailable',
};

interface ValidationIssue {
  instancePath: string;
  keyword?: string;
  message?: string;
  params?: Record<string, unknown>;
}

export function sendError(
  request: FastifyRequest,
  reply: FastifyReply,
  statusCode: number,
  code: string,
  message: string,
  details?: unknown,
) {
  const body: { error: Record<string, unknown> } = { error: { code, message, request_id: request.id } };
  if (details !== undefined) body.error.details = details;
  return reply.code(statusCode).type('application/json; charset=utf-8').send(body);
}

/** The one place where a failure becomes an HTTP answer. */
export function installErrorHandling(app: FastifyInstance, retryAfterSeconds: number) {
  app.setErrorHandler((error: FastifyError | AppError | Error, request, reply) => {
    if (error instanceof AppError) {
      if (error.headers) reply.headers(error.headers);
      return sendError(request, reply, error.statusCode, error.code, error.message, error.details);
    }
    const fe = error as FastifyError & { validation?: ValidationIssue[]; validationContext?: string };
    if (fe.validation) {
      // A malformed id cannot name anything the caller may see: same answer as a missing one.
      if (fe.validationContext === 'params') return sendError(request, reply, 404, 'not_found', 'Not found');
      const details = readable(fe.validation).map((v) => toFieldIssue(fe.validationContext ?? 'body', v));
      return sendError(request, reply, 400, 'validation_error', 'The request is not valid', details);
    }
    // Text PostgreSQL cannot store (NUL, invalid encodings) is the caller's mistake, not ours.
    const sqlState = (error as { code?: unknown }).code;
    if (sqlState === '22021' || sqlState === '22P05') {
      return sendError(
        request,
        reply,
        400,
        'validation_error',
        'Text must not contain NUL or invalid characters',
      );
    }
    if (isDatabaseUnavailable(error)) {
      request.log.warn({ err: error }, 'database unavailable');
      reply.header('retry-after', String(retryAfterSeconds));
      return sendError(request, reply, 503, 'service_unavailable', 'The database is temporarily unavailable');
    }
    const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
    if (status >= 400 && status < 500) {
      if (status === 429 && !reply.hasHeader('retry-after')) reply.header('retry-after', '60');
      const code = CODE_BY_STATUS[status] ?? 'bad_request';
      return sendError(request, reply, status, code, clientMessage(fe, status));
    }
    if (status === 503) {
      if (!reply.hasHeader('retry-after')) reply.header('retry-after', String(retryAfterSeconds));
      return sendError(request, reply, 503, 'service_unavailable', 'Service temporarily unavailable');
    }
    request.log.error({ err: error }, 'unhandled error');
    return sendError(request, reply, 500, 'internal_error', 'Something went wrong on our side');
  });

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    // A known path asked with a method it does not take: 405 with the methods it does (RFC 9110).
    const allowed = METHODS.filter((method) => app.findRoute({ method, url: path }) !== null);
    // (A route that exists for this very method and still calls "not found" means the resource.)
    if (allowed.length > 0 && !(allowed as readonly string[]).includes(request.method)) {
      reply.header('allow', allowed.join(', '));
      return sendError(
        request,
        reply,
        405,
        'method_not_allowed',
        `${request.method} is not allowed on ${path}`,
      );
    }
    return sendError(request, reply, 404, 'not_found', `Route ${request.method} ${path} not found`);
  });
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;

function clientMessage(error: FastifyError, status: number): string {
  // Fastify's own 4xx messages are safe and useful ("Body cannot be empty…"); never echo input.
  if (error.code?.startsWith('FST_')) return error.message;
  return status === 413 ? 'Request body is too large' : error.message || 'Bad request';
}

/**
 * Ajv reports a value outside a union of constants (TypeBox's `Union([Literal…])`) as one "must be
 * equal to constant" per branch plus "must match a schema in anyOf", and an enum without its values.
 * One issue per field that lists what is allowed helps a client more.
 */
function readable(issues: ValidationIssue[]): ValidationIssue[] {
  const constsAt = new Map<string, unknown[]>();
  for (const issue of issues)
    if (issue.keyword === 'const') {
      const list = constsAt.get(issue.instancePath) ?? [];
      list.push(issue.params?.allowedValue);
      constsAt.set(issue.instancePath, list);
    }
  const out: ValidationIssue[] = [];
  for (const issue of issues) {
    const consts = constsAt.get(issue.instancePath);
    if (consts && (issue.keyword === 'const' || issue.keyword === 'anyOf')) {
      if (issue.keyword === 'anyOf') out.push({ ...issue, message: `must be one of ${consts.join(', ')}` });
      continue;
    }
    const allowed = issue.params?.allowedValues;
    if (issue.keyword === 'enum' && Array.isArray(allowed)) {
      out.push({ ...issue, message: `must be one of ${allowed.join(', ')}` });
      continue;
    }
    out.push(issue);
  }
  return out;
}

function toFieldIssue(context: string, issue: ValidationIssue): FieldIssue {
  const path = issue.instancePath
    .split('/')
    .filter(Boolean)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const missing = issue.params?.missingProperty;
  if (typeof missing === 'string') path.push(missing);
  const extra = issue.params?.additionalProperty;
  if (typeof extra === 'string') path.push(extra);
  const where = context === 'querystring' ? 'query' : context;
  return { field: [where, ...path].join('.'), message: issue.message ?? 'is not valid' };
}
