import { describe, expect, it } from 'vitest';
import { errorOf, type SignedUp, signUp } from './helpers/app.js';
import { statementsSent, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

const fx = useTestApp();

async function team(owner: SignedUp, name = 'Studio') {
  const res = await fx.call(owner, 'POST', '/teams', { name });
  expect(res.statusCode).toBe(201);
  return res.json().id as string;
}

async function join(owner: SignedUp, teamId: string, member: SignedUp, role: string) {
  const res = await fx.call(owner, 'POST', `/teams/${teamId}/members`, { email: member.email, role });
  expect(res.statusCode, res.body).toBe(201);
}

describe('teams', () => {
  it('creates a team with its creator as owner, and returns a consistency token', async () => {
    const owner = await signUp(fx.app);
    const res = await fx.call(owner, 'POST', '/teams', { name: 'Night Shift' });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({ name: 'Night Shift', owner_id: owner.id, my_role: 'owner' });
    expect(Number(res.headers['velro-consistency-token'])).toBeGreaterThan(0);
    const list = await fx.call(owner, 'GET', '/teams');
    expect(list.json().items.map((x: { id: string }) => x.id)).toContain(res.json().id);
    // The team, its owner's membership and the audit event are written together.
    const members = await fx.call(owner, 'GET', `/teams/${res.json().id}/members`);
    expect(members.json().items).toEqual([expect.objectContaining({ user_id: owner.id, role: 'owner' })]);
    const { rows } = await fx.sql.query(
      `SELECT actor_id, resource_type FROM audit_events WHERE action = 'team.create' AND resource_id = $1`,
      [res.json().id],
    );
    expect(rows).toEqual([{ actor_id: owner.id, resource_type: 'team' }]);
  });

  it('applies the role rules: admins manage but cannot touch owners; the last owner stays', async () => {
    const [owner, admin, editor, viewer] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const id = await team(owner);
    await join(owner, id, admin, 'admin');
    await join(admin, id, editor, 'editor');

    // an admin cannot add an owner, promote to owner, or remove/demote an owner
    expect(
      (await fx.call(admin, 'POST', `/teams/${id}/members`, { email: viewer.email, role: 'owner' }))
        .statusCode,
    ).toBe(403);
    expect(
      (await fx.call(admin, 'PATCH', `/teams/${id}/members/${editor.id}`, { role: 'owner' })).statusCode,
    ).toBe(403);
    expect(
      (await fx.call(admin, 'PATCH', `/teams/${id}/members/${owner.id}`, { role: 'viewer' })).statusCode,
    ).toBe(403);
    expect((await fx.call(admin, 'DELETE', `/teams/${id}/members/${owner.id}`)).statusCode).toBe(403);
    // an editor manages nothing
    expect(
      (await fx.call(editor, 'POST', `/teams/${id}/members`, { email: viewer.email, role: 'viewer' }))
        .statusCode,
    ).toBe(403);
    // the admin can add a viewer
    await join(admin, id, viewer, 'viewer');

    // the last owner cannot leave, be demoted or be deactivated
    const leave = await fx.call(owner, 'DELETE', `/teams/${id}/members/${owner.id}`);
    expect(leave.statusCode).toBe(409);
    expect(errorOf(leave).code).toBe('last_owner');
    expect(
      (await fx.call(owner, 'PATCH', `/teams/${id}/members/${owner.id}`, { role: 'admin' })).statusCode,
    ).toBe(409);
    expect(
      (await fx.call(owner, 'PATCH', `/teams/${id}/members/${owner.id}`, { is_active: false })).statusCode,
    ).toBe(409);

    // with a second owner, the first can step down, and the team's owner_id moves
    expect(
      (await fx.call(owner, 'PATCH', `/teams/${id}/members/${admin.id}`, { role: 'owner' })).statusCode,
    ).toBe(200);
    expect((await fx.call(owner, 'DELETE', `/teams/${id}/members/${owner.id}`)).statusCode).toBe(204);
    const after = await fx.call(admin, 'GET', `/teams/${id}`);
    expect(after.json()).toMatchObject({ owner_id: admin.id, my_role: 'owner' });
    expect((await fx.call(owner, 'GET', `/teams/${id}`)).statusCode).toBe(404);

    // only owners delete the team
    await join(admin, id, owner, 'admin');
    expect((await fx.call(owner, 'DELETE', `/teams/${id}`)).statusCode).toBe(403);
    expect((await fx.call(admin, 'DELETE', `/teams/${id}`)).statusCode).toBe(204);
    expect((await fx.call(admin, 'GET', `/teams/${id}`)).statusCode).toBe(404);
  });

  it('deleting a team leaves its projects with their owners, private, and still editable', async () => {
    const [owner, member] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const id = await team(owner);
    await join(owner, id, member, 'editor');
    const project = (
      await fx.call(owner, 'POST', '/projects', { name: 'Kept', team_id: id, visibility: 'team' })
    ).json();
    expect((await fx.call(owner, 'DELETE', `/teams/${id}`)).statusCode).toBe(204);
    const after = await fx.call(owner, 'GET', `/projects/${project.id}`);
    expect(after.json()).toMatchObject({ team_id: null, visibility: 'private', access_method: 'owner' });
    expect((await fx.call(owner, 'PATCH', `/projects/${project.id}`, { name: 'Renamed' })).statusCode).toBe(
      200,
    );
    expect((await fx.call(member, 'GET', `/projects/${project.id}`)).statusCode).toBe(404);
  });

  it('owner_id follows the owners when the primary one is demoted or deactivated; each change is one write', async () => {
    const statements = () => statementsSent('write_heavy', fx.app);
    const [a, b, c] = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
    const id = await team(a);
    await join(a, id, b, 'owner');
    // BEGIN, the team lock, the fresh decision, the member and owners read, one write (member,
    // owner_id, audit event, read back), COMMIT, the consistency token.
    const before = await statements();
    const demoted = await fx.call(a, 'PATCH', `/teams/${id}/members/${a.id}`, { role: 'admin' });
    expect(demoted.statusCode).toBe(200);
    expect(demoted.json()).toMatchObject({ user_id: a.id, email: a.email, role: 'admin', is_active: true });
    expect((await statements()) - before).toBe(7);
    expect((await fx.call(b, 'GET', `/teams/${id}`)).json()).toMatchObject({ owner_id: b.id });
    const audit = await fx.sql.query(
      `SELECT details FROM audit_events WHERE resource_id = $1 AND action = 'team.member_update'`,
      [id],
    );
    expect(audit.rows.map((r) => r.details)).toEqual([
      { user_id: a.id, from: { role: 'owner', is_active: true }, to: { role: 'admin' } },
    ]);

    await join(b, id, c, 'owner');
    const deactivated = await fx.call(c, 'PATCH', `/teams/${id}/members/${b.id}`, { is_active: false });
    expect(deactivated.json()).toMatchObject({ user_id: b.id, role: 'owner', is_active: false });
    expect((await fx.call(c, 'GET', `/teams/${id}`)).json()).toMatchObject({ owner_id: c.id });
    // c is now the only active owner: it can neither step down nor leave.
    expect(errorOf(await fx.call(c, 'PATCH', `/teams/${id}/members/${c.id}`, { role: 'viewer' })).code).toBe(
      'last_owner',
    );
    expect(errorOf(await fx.call(c, 'DELETE', `/teams/${id}/members/${c.id}`)).code).toBe('last_owner');

    // Reactivated, b may take over when c leaves: owner_id moves back to b.
    expect((await fx.call(c, 'PATCH', `/teams/${id}/members/${b.id}`, { is_active: true })).statusCode).toBe(
      200,
    );
    const beforeLeave = await statements();
    expect((await fx.call(c, 'DELETE', `/teams/${id}/members/${c.id}`)).statusCode).toBe(204);
    expect((await statements()) - beforeLeave).toBe(7);
    expect((await fx.call(b, 'GET', `/teams/${id}`)).json()).toMatchObject({ owner_id: b.id });
    const left = await fx.sql.query(
      `SELECT details FROM audit_events WHERE resource_id = $1 AND action = 'team.member_leave'`,
      [id],
    );
    expect(left.rows.map((r) => r.details)).toEqual([{ user_id: c.id, role: 'owner' }]);
  });

  it('two owners demoting each other at once leave one owner', async () => {
    const [a, b] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const id = await team(a);
    await join(a, id, b, 'owner');
    const results = await Promise.all([
      fx.call(a, 'PATCH', `/teams/${id}/members/${b.id}`, { role: 'viewer' }),
      fx.call(b, 'PATCH', `/teams/${id}/members/${a.id}`, { role: 'viewer' }),
    ]);
    const owners = await fx.sql.query(
      `SELECT count(*)::int AS n FROM team_members WHERE team_id = $1 AND role = 'owner' AND is_active`,
      [id],
    );
    expect(owners.rows[0].n).toBe(1);
    expect(results.map((r) => r.statusCode).sort()).toEqual([200, 403]);
  });

  it('adding an unknown user is 404, a member twice is 409, email and user_id together is 400', async () => {
    const [owner, other] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const id = await team(owner);
    expect(
      (await fx.call(owner, 'POST', `/teams/${id}/members`, { email: 'ghost@example.com', role: 'viewer' }))
        .statusCode,
    ).toBe(404);
    await join(owner, id, other, 'viewer');
    expect(
      (await fx.call(owner, 'POST', `/teams/${id}/members`, { user_id: other.id, role: 'editor' }))
        .statusCode,
    ).toBe(409);
    expect(
      (
        await fx.call(owner, 'POST', `/teams/${id}/members`, {
          user_id: other.id,
          email: other.email,
          role: 'editor',
        })
      ).statusCode,
    ).toBe(400);
  });

  it('adds by email or id and answers the member; refusals name their reason and audit nothing', async () => {
    const [owner, byEmail, byId, inactive] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const id = await team(owner);
    await fx.sql.query('UPDATE users SET is_active = false WHERE id = $1', [inactive.id]);
    const added = await fx.call(owner, 'POST', `/teams/${id}/members`, {
      email: byEmail.email.toUpperCase(),
      role: 'editor',
    });
    expect(added.statusCode, added.body).toBe(201);
    expect(added.json()).toEqual({
      user_id: byEmail.id,
      email: byEmail.email,
      display_name: expect.any(String),
      role: 'editor',
      is_active: true,
      joined_at: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/),
    });
    expect(Number(added.headers['velro-consistency-token'])).toBeGreaterThan(0);
    const viaId = await fx.call(owner, 'POST', `/teams/${id}/members`, { user_id: byId.id, role: 'viewer' });
    expect(viaId.statusCode).toBe(201);
    expect(viaId.json()).toMatchObject({ user_id: byId.id, role: 'viewer' });

    const again = await fx.call(owner, 'POST', `/teams/${id}/members`, { user_id: byId.id, role: 'admin' });
    expect(again.statusCode).toBe(409);
    expect(errorOf(again).code).toBe('already_member');
    for (const payload of [
      { email: inactive.email, role: 'viewer' },
      { user_id: inactive.id, role: 'viewer' },
      { user_id: '00000000-0000-4000-8000-000000000000', role: 'viewer' },
    ]) {
      const refused = await fx.call(owner, 'POST', `/teams/${id}/members`, payload);
      expect(refused.statusCode).toBe(404);
      expect(errorOf(refused).code).toBe('user_not_found');
    }
    // The role of a refused add is unchanged, and only the two adds were audited.
    const members = await fx.call(owner, 'GET', `/teams/${id}/members`);
    expect(members.json().items.find((m: { user_id: string }) => m.user_id === byId.id)?.role).toBe('viewer');
    const { rows } = await fx.sql.query(
      `SELECT details FROM audit_events WHERE action = 'team.member_add' AND resource_id = $1 ORDER BY id`,
      [id],
    );
    expect(rows.map((r) => r.details)).toEqual([
      { user_id: byEmail.id, role: 'editor' },
      { user_id: byId.id, role: 'viewer' },
    ]);
  });
});

describe('projects', () => {
  it('defaults to private; team visibility needs a team; moving into a team needs manage on it', async () => {
    const [owner, stranger] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const res = await fx.call(owner, 'POST', '/projects', { name: 'Moodboard' });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({
      visibility: 'private',
      team_id: null,
      owner_id: owner.id,
      access_method: 'owner',
    });
    expect((await fx.call(owner, 'POST', '/projects', { name: 'x', visibility: 'team' })).statusCode).toBe(
      400,
    );

    const strangersTeam = await team(stranger);
    const intoOther = await fx.call(owner, 'POST', '/projects', {
      name: 'x',
      team_id: strangersTeam,
      visibility: 'team',
    });
    expect(intoOther.statusCode).toBe(404);
  });

  it('an access change and a delete are audited with the write, a rename is not', async () => {
    const owner = await signUp(fx.app);
    const teamId = await team(owner);
    const project = (await fx.call(owner, 'POST', '/projects', { name: 'Audited' })).json();
    const renamed = await fx.call(owner, 'PATCH', `/projects/${project.id}`, { name: 'Renamed' });
    expect(renamed.json()).toMatchObject({ name: 'Renamed', visibility: 'private' });
    expect(renamed.headers['velro-consistency-token']).toBeUndefined();
    const moved = await fx.call(owner, 'PATCH', `/projects/${project.id}`, {
      team_id: teamId,
      visibility: 'team',
    });
    expect(moved.json()).toMatchObject({ name: 'Renamed', team_id: teamId, visibility: 'team' });
    expect(Number(moved.headers['velro-consistency-token'])).toBeGreaterThan(0);
    expect((await fx.call(owner, 'DELETE', `/projects/${project.id}`)).statusCode).toBe(204);
    const events = await fx.sql.query(
      `SELECT action, details FROM audit_events WHERE resource_type = 'project' AND resource_id = $1 ORDER BY id`,
      [project.id],
    );
    expect(events.rows).toEqual([
      expect.objectContaining({ action: 'project.create' }),
      {
        action: 'project.access_change',
        details: {
          from: { visibility: 'private', team_id: null },
          to: { visibility: 'team', team_id: teamId },
        },
      },
      { action: 'project.delete', details: null },
    ]);
  });

  it('team members see team projects by role; private hides them; public shows everyone', async () => {
    const [owner, viewer, editor, stranger] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const teamId = await team(owner);
    await join(owner, teamId, viewer, 'viewer');
    await join(owner, teamId, editor, 'editor');
    const project = (
      await fx.call(owner, 'POST', '/projects', { name: 'Shared', team_id: teamId, visibility: 'team' })
    ).json();

    expect((await fx.call(viewer, 'GET', `/projects/${project.id}`)).json()).toMatchObject({
      access_method: 'team:viewer',
      permissions: ['view'],
    });
    expect((await fx.call(viewer, 'PATCH', `/projects/${project.id}`, { name: 'Renamed' })).statusCode).toBe(
      403,
    );
    expect((await fx.call(editor, 'PATCH', `/projects/${project.id}`, { name: 'Renamed' })).statusCode).toBe(
      200,
    );
    expect(
      (await fx.call(editor, 'PATCH', `/projects/${project.id}`, { visibility: 'public' })).statusCode,
    ).toBe(403);
    expect((await fx.call(editor, 'DELETE', `/projects/${project.id}`)).statusCode).toBe(403);
    expect((await fx.call(stranger, 'GET', `/projects/${project.id}`)).statusCode).toBe(404);

    const listed = (await fx.call(viewer, 'GET', '/projects')).json().items.map((p: { id: string }) => p.id);
    expect(listed).toContain(project.id);

    const priv = await fx.call(owner, 'PATCH', `/projects/${project.id}`, { visibility: 'private' });
    expect(priv.statusCode).toBe(200);
    expect(Number(priv.headers['velro-consistency-token'])).toBeGreaterThan(0);
    expect((await fx.call(viewer, 'GET', `/projects/${project.id}`)).statusCode).toBe(404);
    expect(
      (await fx.call(viewer, 'GET', '/projects')).json().items.map((p: { id: string }) => p.id),
    ).not.toContain(project.id);

    await fx.call(owner, 'PATCH', `/projects/${project.id}`, { visibility: 'public' });
    expect((await fx.call(stranger, 'GET', `/projects/${project.id}`)).json()).toMatchObject({
      access_method: 'public',
      permissions: ['view'],
    });
  });

  it('deleting a project hides it and its generations from everyone, owner included', async () => {
    const owner = await signUp(fx.app);
    const project = (
      await fx.call(owner, 'POST', '/projects', { name: 'Doomed', visibility: 'public' })
    ).json();
    const gen = await insertGeneration(fx.sql, { userId: owner.id, projectId: project.id });
    expect((await fx.call(owner, 'GET', `/generations/${gen}`)).statusCode).toBe(200);
    expect((await fx.call(owner, 'DELETE', `/projects/${project.id}`)).statusCode).toBe(204);
    expect((await fx.call(owner, 'GET', `/projects/${project.id}`)).statusCode).toBe(404);
    expect((await fx.call(owner, 'GET', `/generations/${gen}`)).statusCode).toBe(404);
    expect((await fx.call(owner, 'GET', `/generations/${gen}/authorize`)).statusCode).toBe(404);
  });

  it('pages through every viewable project without repeats', async () => {
    const [owner, member] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const teamId = await team(owner);
    await join(owner, teamId, member, 'viewer');
    const expected: string[] = [];
    for (let i = 0; i < 3; i++)
      expected.push((await fx.call(member, 'POST', '/projects', { name: `mine ${i}` })).json().id);
    for (let i = 0; i < 3; i++) {
      expected.push(
        (
          await fx.call(owner, 'POST', '/projects', {
            name: `team ${i}`,
            team_id: teamId,
            visibility: 'team',
          })
        ).json().id,
      );
    }
    await fx.call(owner, 'POST', '/projects', { name: 'owner private' });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res = await fx.call(member, 'GET', `/projects?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      const body = res.json();
      seen.push(...body.items.map((p: { id: string }) => p.id));
      cursor = body.next_cursor;
    } while (cursor);
    // other files' public projects may be there too (shared database per file): only check ours
    expect(seen.filter((id) => expected.includes(id)).sort()).toEqual([...expected].sort());
    expect(new Set(seen).size).toBe(seen.length);
  });
});

describe('generations (authorization side)', () => {
  it('answers GenerationPermissions per access method and 404 for strangers', async () => {
    const [owner, admin, viewer, stranger] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const teamId = await team(owner);
    await join(owner, teamId, admin, 'admin');
    await join(owner, teamId, viewer, 'viewer');
    const project = (
      await fx.call(owner, 'POST', '/projects', { name: 'P', team_id: teamId, visibility: 'team' })
    ).json();
    const gen = await insertGeneration(fx.sql, { userId: viewer.id, projectId: project.id });

    const perms = async (who: SignedUp) => fx.call(who, 'GET', `/generations/${gen}/authorize`);
    expect((await perms(viewer)).json()).toMatchObject({
      can_view: true,
      can_delete: true,
      access_method: 'owner',
    });
    expect((await perms(owner)).json()).toMatchObject({
      can_edit: true,
      can_delete: true,
      access_method: 'project_owner',
    });
    expect((await perms(admin)).json()).toMatchObject({
      can_download: true,
      can_edit: true,
      can_delete: true,
      access_method: 'team:admin',
    });
    const s = await perms(stranger);
    expect(s.statusCode).toBe(404);
    expect(s.headers['x-cache']).toBeUndefined();
    expect(s.body).not.toContain(gen);

    expect((await fx.call(admin, 'DELETE', `/generations/${gen}`)).statusCode).toBe(204);
    expect((await fx.call(viewer, 'GET', `/generations/${gen}`)).statusCode).toBe(404);
  });
});
