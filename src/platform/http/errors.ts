/**
 * Typed errors thrown by services. One handler (error-handler.ts) turns them, and every other
 * failure, into the envelope `{"error":{"code","message","request_id","details?"}}`.
 */
export interface FieldIssue {
  field: string;
  message: string;
}

export class AppError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.name = 'AppError';
  }
}

export const badRequest = (message: string, details?: FieldIssue[]) =>
  new AppError(400, 'validation_error', message, details);
export const unauthorized = (message = 'Authentication required', code = 'unauthorized') =>
  new AppError(401, code, message, undefined, { 'www-authenticate': 'Bearer' });
export const forbidden = (message = 'You do not have permission to do this', code = 'forbidden') =>
  new AppError(403, code, message);
export const notFound = (message = 'Not found') => new AppError(404, 'not_found', message);
export const conflict = (message: string, code = 'conflict') => new AppError(409, code, message);
export const tooManyRequests = (retryAfterSeconds: number, message = 'Too many requests') =>
  new AppError(
    429,
    'rate_limited',
    message,
    { retry_after_seconds: retryAfterSeconds },
    {
      'retry-after': String(retryAfterSeconds),
    },
  );
export const serviceUnavailable = (retryAfterSeconds: number, message = 'Service temporarily unavailable') =>
  new AppError(503, 'service_unavailable', message, undefined, { 'retry-after': String(retryAfterSeconds) });
