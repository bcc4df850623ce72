import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { accessContext, minRevisionOf } from '../../platform/http/context.js';
import { badRequest } from '../../platform/http/errors.js';
import { errors, PageQuery, page } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import { Balance, GrantBody, Granted, Transaction } from './schemas.js';
import { type CreditsDeps, createCreditsService } from './service.js';

export async function creditRoutes(fastify: FastifyInstance, opts: CreditsDeps) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const credits = createCreditsService(opts);

  app.get(
    '/credits/balance',
    {
      config: { scope: 'any' },
      schema: {
        operationId: 'getCreditBalance',
        summary: 'My credit balance',
        tags: ['credits'],
        response: { 200: Balance, ...errors(401) },
      },
    },
    async (request) => ({ credits_balance: await credits.balance(principalOf(request).userId) }),
  );

  app.get(
    '/credits/transactions',
    {
      config: { scope: 'any' },
      schema: {
        operationId: 'listCreditTransactions',
        summary: 'My credit ledger, newest first',
        tags: ['credits'],
        querystring: Type.Object(PageQuery),
        response: { 200: page(Transaction), ...errors(400, 401) },
      },
    },
    async (request) =>
      credits.ledger(
        principalOf(request).userId,
        { limit: request.query.limit ?? 20, cursor: request.query.cursor },
        minRevisionOf(request),
      ),
  );

  app.post(
    '/admin/credits/grant',
    {
      config: { scope: 'admin', admin: true },
      schema: {
        operationId: 'grantCredits',
        summary: 'Give a user credits (administrators)',
        tags: ['admin'],
        body: GrantBody,
        response: {
          200: Granted,
          ...errors(400, 401, 403, 404),
        },
      },
    },
    async (request) => {
      const { user_id, email, amount, note } = request.body;
      if ((user_id === undefined) === (email === undefined)) {
        throw badRequest('Give exactly one of user_id or email', [
          { field: 'body.user_id', message: 'or body.email is required' },
        ]);
      }
      return credits.grant(
        principalOf(request).userId,
        { userId: user_id, email },
        amount,
        note,
        accessContext(request),
      );
    },
  );
}
