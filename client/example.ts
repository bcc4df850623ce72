import { createVelroClient, type GenerationEvent, type Tokens, unwrap } from './index.js';

/** Sign up, organise, generate, follow the progress, fetch the image: the whole product through the client. */
export async function example(baseUrl: string, email: string) {
  const session: { tokens: Tokens | null } = { tokens: null };
  const client = createVelroClient({
    baseUrl,
    // Called after sign-up, sign-in and every refresh: keep the newest pair (a file, a keychain…).
    onTokens: (tokens) => {
      session.tokens = tokens;
    },
  });

  // 1. An account: the client keeps the session it answers with.
  const { user } = unwrap(
    await client.POST('/api/v1/auth/register', { body: { email, password: 'correct horse battery' } }),
  );

  // 2. A project, then a team, then the project shared with the team.
  const project = unwrap(await client.POST('/api/v1/projects', { body: { name: 'Launch visuals' } }));
  const team = unwrap(await client.POST('/api/v1/teams', { body: { name: 'Studio' } }));
  unwrap(
    await client.PATCH('/api/v1/projects/{id}', {
      params: { path: { id: project.id } },
      body: { team_id: team.id, visibility: 'team' },
    }),
  );

  // 3. A generation in that project, with the cheapest model.
  const models = unwrap(await client.GET('/api/v1/models'));
  const model = [...models.items].sort((a, b) => a.cost_credits - b.cost_credits)[0];
  if (!model) throw new Error('no models');
  const generation = unwrap(
    await client.POST('/api/v1/generations', {
      body: {
        model_id: model.id,
        prompt: 'a lighthouse at dusk, watercolour',
        project_id: project.id,
        parameters: { width: 256, height: 256, seed: 7 },
      },
    }),
  );

  // 4. Its progress, as Server-Sent Events, until it completes, fails or is cancelled.
  const events: GenerationEvent[] = [];
  for await (const event of client.generationEvents(generation.id)) {
    events.push(event);
  }

  // 5. A signed, expiring URL for the image, fetched without any token.
  const media = unwrap(
    await client.GET('/api/v1/generations/{id}/media-urls', { params: { path: { id: generation.id } } }),
  );
  const first = media.items[0];
  if (!first) throw new Error('the generation has no media');
  const image = await fetch(new URL(first.url, baseUrl));

  return { user, project, team, generation, events, media: first, image, tokens: session.tokens };
}
