import { addCheckRoute, createPeer, listen } from './common.js';

/**
 * The floor of any check route: Velro's request (POST /api/v1/authz/check, JSON body validated,
 * bearer JWT verified like the other peers) answered `{allowed: true}` without deciding anything.
 * Not a target's reference (that is `bare`), but it separates what the request's shape costs from
 * what the authorization costs.
 */
const app = createPeer();
addCheckRoute(app, () => true);
await listen(app);
