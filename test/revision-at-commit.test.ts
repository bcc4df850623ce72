/**
 * Revisions are taken at commit (migration 009). A transaction that changed an authorization fact
 * and is still open must not hold up other fact-changing writes (before, it held the revision row
 * from its first change to its commit, and under load such writes queued behind each other for
 * seconds); and revisions must still follow commit order, stay contiguous and be announced once
 * each, with every consistency token at least the revision of its own write.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const TOKEN = 'velro-consistency-token';

interface Announcement {
  rev: number;
  key: string;
}

describe('revisions taken at commit', () => {
  const fixture = useTestApp();
  let listener: pg.Client;
  let open: pg.Client;
  const heard: Announcement[] = [];

  beforeAll(async () => {
    listener = new pg.Client({ connectionString: fixture.db.url });
    await listener.connect();
    listener.on('notification', (message) => {
      if (message.channel === 'velro_authz' && message.payload) heard.push(JSON.parse(message.payload));
    });
    await listener.query('LISTEN velro_authz');
    open = new pg.Client({ connectionString: fixture.db.url });
    await open.connect();
  });

  afterAll(async () => {
    await open?.end().catch(() => {});
    await listener?.end();
  });

  const revisionNow = async () => Number((await open.query('SELECT rev FROM authz_revision')).rows[0].rev);
  /** Bounds a request that would hang on a lock, so the failure says what it waited for. */
  const within = <T>(promise: Promise<T>, ms: number, what: string) =>
    Promise.race([
      promise,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`${what} still waiting after ${ms} ms`)), ms).unref(),
      ),
    ]);
  const heardUpTo = async (rev: number) => {
    for (let i = 0; i < 500 && !heard.some((a) => a.rev >= rev); i++) await listener.query('SELECT 1');
    expect(
      heard.some((a) => a.rev >= rev),
      `announcement of ${rev}`,
    ).toBe(true);
  };

  it('lets fact-changing writes commit while another one is still open, in commit order', async () => {
    const owner: SignedUp = await signUp(fixture.app);
    const member: SignedUp = await signUp(fixture.app);
    const bystander: SignedUp = await signUp(fixture.app);
    const team = await fixture.call(owner, 'POST', '/teams', { name: 'commit order' });
    expect(team.statusCode).toBe(201);
    const teamId = team.json<{ id: string }>().id;
    const start = await revisionNow();

    // A transaction changes a fact (the bystander is deactivated) and stays open.
    await open.query('BEGIN');
    await open.query('UPDATE users SET is_active = false WHERE id = $1', [bystander.id]);

    // Meanwhile, two writes through the API that change facts: both finish without waiting for it.
    const added = await within(
      fixture.call(owner, 'POST', `/teams/${teamId}/members`, { email: member.email, role: 'viewer' }),
      15_000,
      'adding a member while another fact change is open',
    );
    expect(added.statusCode).toBe(201);
    const loggedOut = await within(
      fixture.call(member, 'POST', '/auth/logout'),
      15_000,
      'signing out while another fact change is open',
    );
    expect(loggedOut.statusCode).toBe(204);
    const addedAt = Number(added.headers[TOKEN]);
    expect(addedAt).toBeGreaterThan(start);

    // The open transaction has not taken a revision yet; it takes the next one when it commits.
    await open.query('COMMIT');
    const end = await revisionNow();
    await heardUpTo(end);
    const announced = heard.filter((a) => a.rev > start && a.rev <= end);
    // Contiguous, each once, in commit order: the member's, the session's, then the bystander's.
    expect(announced.map((a) => a.rev)).toEqual(Array.from({ length: end - start }, (_, i) => start + i + 1));
    const revOf = (prefix: string, id: string) =>
      announced.find((a) => a.key.startsWith(prefix) && a.key.endsWith(id))?.rev;
    const membership = revOf('mems|', member.id);
    const bystanderRev = revOf('user|', bystander.id);
    expect(membership).toBeDefined();
    expect(bystanderRev).toBe(end);
    // The token of a write is at least the revision that write committed at.
    expect(addedAt).toBeGreaterThanOrEqual(membership as number);
    expect(addedAt).toBeLessThan(end);
  });

  it('gives a rolled-back change its number back', async () => {
    const person = await signUp(fixture.app);
    const before = await revisionNow();
    await open.query('BEGIN');
    await open.query('UPDATE users SET is_active = false WHERE id = $1', [person.id]);
    await open.query('ROLLBACK');
    expect(await revisionNow()).toBe(before);
    // The next committed change takes the next number: no gap for a listener to mistake for a loss.
    await open.query('UPDATE users SET is_active = false WHERE id = $1', [person.id]);
    expect(await revisionNow()).toBe(before + 1);
    await heardUpTo(before + 1);
    expect(heard.filter((a) => a.rev === before + 1)).toHaveLength(1);
  });

  it('authz_settle() gives a transaction its revision before the commit when it must know it', async () => {
    const person = await signUp(fixture.app);
    const before = await revisionNow();
    await open.query('BEGIN');
    await open.query('UPDATE users SET role = $2 WHERE id = $1', [person.id, 'admin']);
    const settled = Number((await open.query('SELECT authz_settle() AS rev')).rows[0].rev);
    await open.query('COMMIT');
    expect(settled).toBe(before + 1);
    expect(await revisionNow()).toBe(before + 1);
  });
});
