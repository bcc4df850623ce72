import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { sendRevision } from '../../platform/http/context.js';
import { tooManyRequests } from '../../platform/http/errors.js';
import { errors } from '../../platform/http/schemas.js';
import { principalOf, userSessionOf } from './authenticate.js';
import * as S from './schemas.js';
import { type AuthService, type ClientContext, normaliseEmail } from './service.js';

export interface AuthRouteOptions {
  service: AuthService;
  limits: { loginPerIp: number; loginPerAccount: number; registerPerIp: number; windowSeconds: number };
}

export function clientOf(request: FastifyRequest): ClientContext {
  const ua = request.headers['user-agent'];
  return { ip: request.ip || null, userAgent: typeof ua === 'string' ? ua : null, requestId: request.id };
}

const tags = ['auth'];

export async function authRoutes(fastify: FastifyInstance, opts: AuthRouteOptions) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service, limits } = opts;
  const timeWindow = limits.windowSeconds * 1000;

  const registerPerIp = app.createRateLimit({
    max: limits.registerPerIp,
    timeWindow,
    keyGenerator: (req) => `register-ip:${req.ip}`,
  });
  const loginPerIp = app.createRateLimit({
    max: limits.loginPerIp,
    timeWindow,
    keyGenerator: (req) => `login-ip:${req.ip}`,
  });
  // Counts failures only: a user who types the right password is not locked out by their own use,
  // while guessing one account from many addresses is stopped.
  const loginFailuresPerAccount = app.createRateLimit({
    max: limits.loginPerAccount,
    timeWindow,
    keyGenerator: (req) =>
      `login-account:${normaliseEmail(String((req.body as { email?: unknown })?.email ?? ''))}`,
  });

  // The same for a signed-in user proving their current password: a stolen access token must not
  // become an unlimited password oracle. Per account, shared across instances like the login's.
  const passwordFailuresPerAccount = app.createRateLimit({
    max: limits.loginPerAccount,
    timeWindow,
    keyGenerator: (req) => `password-account:${req.principal?.userId ?? req.ip}`,
  });

  type LimitState =
    | { isAllowed: true }
    | { isAllowed: false; isExceeded: boolean; remaining: number; ttlInSeconds: number };
  /** After counting this request: refuse when it went over the limit. */
  const refuseWhenExceeded = (state: LimitState, what: string) => {
    if (!state.isAllowed && state.isExceeded)
      throw tooManyRequests(Math.max(1, state.ttlInSeconds), `Too many ${what}; try again later`);
  };
  /** Without counting: refuse when the budget is already spent. */
  const refuseWhenSpent = (state: LimitState, what: string) => {
    if (!state.isAllowed && state.remaining <= 0)
      throw tooManyRequests(Math.max(1, state.ttlInSeconds), `Too many ${what}; try again later`);
  };

  app.post(
    '/auth/register',
    {
      config: { public: true, routeClass: 'critical_auth' },
      schema: {
        operationId: 'register',
        summary: 'Create an account and sign in',
        tags,
        body: S.RegisterBody,
        response: { 201: S.TokenPair, ...errors(400, 409, 413, 415, 429) },
      },
    },
    async (request, reply) => {
      refuseWhenExceeded(await registerPerIp(request), 'sign-ups from this address');
      const pair = await service.register(request.body, clientOf(request));
      return reply.code(201).send(pair);
    },
  );

  app.post(
    '/auth/login',
    {
      config: { public: true, routeClass: 'critical_auth' },
      schema: {
        operationId: 'login',
        summary: 'Sign in with email and password',
        tags,
        body: S.LoginBody,
        response: { 200: S.TokenPair, ...errors(400, 401, 413, 415, 429) },
      },
    },
    async (request) => {
      refuseWhenExceeded(await loginPerIp(request), 'sign-in attempts from this address');
      refuseWhenSpent(
        await loginFailuresPerAccount(request, { increment: false }),
        'failed sign-ins for this account',
      );
      try {
        return await service.login(request.body, clientOf(request));
      } catch (error) {
        if ((error as { statusCode?: number }).statusCode === 401) await loginFailuresPerAccount(request);
        throw error;
      }
    },
  );

  app.post(
    '/auth/refresh',
    {
      config: { public: true, routeClass: 'critical_auth' },
      schema: {
        operationId: 'refreshToken',
        summary: 'Exchange a refresh token for a new pair (the old one stops working)',
        description:
          'Rotates: the presented refresh token is spent, and any later use of it is treated as theft: ' +
          '401 refresh_token_reused, and the whole session is revoked. Refreshes with the same token ' +
          'that overlap (two tabs refreshing at once, before either has an answer) are one refresh and ' +
          'all get the same new pair. Operators may opt in to a reuse interval ' +
          '(REFRESH_TOKEN_REUSE_INTERVAL_MS, 0 by default): within it, a rotated token whose successor ' +
          'is still unused answers that same successor and a fresh access token.',
        tags,
        body: S.RefreshBody,
        response: { 200: S.TokenPair, ...errors(400, 401) },
      },
    },
    async (request) => service.refresh(request.body.refresh_token, clientOf(request)),
  );

  app.post(
    '/auth/logout',
    {
      config: { routeClass: 'critical_auth', consistencyToken: 'returns' },
      schema: {
        operationId: 'logout',
        summary: 'End this session',
        tags,
        response: { 204: Type.Null(), ...errors(401, 403) },
      },
    },
    async (request, reply) => {
      await sendRevision(reply, await service.logout(userSessionOf(request), clientOf(request)));
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/auth/logout-all',
    {
      config: { routeClass: 'critical_auth', consistencyToken: 'returns' },
      schema: {
        operationId: 'logoutAll',
        summary: 'End every session of this user',
        tags,
        response: { 200: S.RevokedSessions, ...errors(401, 403) },
      },
    },
    async (request, reply) => {
      const done = await service.logoutAll(userSessionOf(request), clientOf(request));
      await sendRevision(reply, done.revision);
      return { revoked_sessions: done.count };
    },
  );

  app.get(
    '/auth/me',
    {
      config: { routeClass: 'critical_auth', scope: 'any' },
      schema: {
        operationId: 'getMe',
        summary: 'The signed-in user (or the owner of the service key)',
        tags,
        response: { 200: Type.Ref('User'), ...errors(401) },
      },
    },
    async (request) => service.me(principalOf(request).userId),
  );

  app.patch(
    '/auth/profile',
    {
      config: { routeClass: 'standard' },
      schema: {
        operationId: 'updateProfile',
        summary: 'Change the display name',
        tags,
        body: S.ProfileBody,
        response: { 200: Type.Ref('User'), ...errors(400, 401, 403) },
      },
    },
    async (request) => service.updateProfile(userSessionOf(request).userId, request.body),
  );

  app.post(
    '/auth/password',
    {
      config: { routeClass: 'critical_auth', consistencyToken: 'returns' },
      schema: {
        operationId: 'changePassword',
        summary: 'Change the password; every other session is revoked',
        tags,
        body: S.PasswordBody,
        response: {
          200: S.RevokedSessions,
          ...errors(400, 401, 403, 429),
        },
      },
    },
    async (request, reply) => {
      const principal = userSessionOf(request);
      refuseWhenSpent(
        await passwordFailuresPerAccount(request, { increment: false }),
        'wrong current passwords for this account',
      );
      let done: Awaited<ReturnType<AuthService['changePassword']>>;
      try {
        done = await service.changePassword(principal, request.body, clientOf(request));
      } catch (error) {
        if ((error as { code?: string }).code === 'invalid_current_password')
          await passwordFailuresPerAccount(request);
        throw error;
      }
      await sendRevision(reply, done.revision);
      return { revoked_sessions: done.revoked_sessions };
    },
  );
}
