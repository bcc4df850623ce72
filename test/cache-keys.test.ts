/**
 * Cache keys (SPEC §6 rule 5): `cacheKey()` must never map two different (kind, fields) tuples to
 * one key — ids may contain `|`, `:`, digits or NUL — and the SQL twin `authz_key()` (migration
 * 004), which names the keys the database invalidates, must build exactly the same strings.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cacheKey, type KeyKind, kindOf, oneFieldKey } from '../src/platform/cache/keys.js';
import { signUp } from './helpers/app.js';
import { useTestApp, useTestDatabase } from './helpers/fixture.js';

const KINDS: readonly KeyKind[] = ['gen', 'proj', 'team', 'mems', 'sess', 'user', 'svckey', 'media'];

/**
 * The inverse of `cacheKey`: a left inverse proves injectivity outright (if two tuples gave one key,
 * parsing that key could not return both). Throws on anything `cacheKey` cannot have produced.
 */
function parseKey(key: string): { kind: string; fields: string[] } {
  const bar = key.indexOf('|');
  if (bar < 0) return { kind: key, fields: [] };
  const fields: string[] = [];
  let at = bar;
  while (at < key.length) {
    if (key[at] !== '|') throw new Error(`expected '|' at ${at} in ${JSON.stringify(key)}`);
    const colon = key.indexOf(':', at + 1);
    const digits = key.slice(at + 1, colon);
    if (colon < 0 || !/^(0|[1-9]\d*)$/.test(digits)) throw new Error(`bad length at ${at}`);
    const start = colon + 1;
    const end = start + Number(digits);
    if (end > key.length) throw new Error(`field overruns the key at ${at}`);
    fields.push(key.slice(start, end));
    at = end;
  }
  return { kind: key.slice(0, bar), fields };
}

const sameTuple = (ka: string, a: readonly string[], kb: string, b: readonly string[]) =>
  ka === kb && a.length === b.length && a.every((field, i) => field === b[i]);

// Characters that make length-prefix encodings go wrong, plus every other kind of code unit: digits,
// separators, NUL, empty-ish, BMP and astral characters, and lone surrogate halves.
const nasty = fc.constantFrom('|', ':', '0', '1', '2', '9', '10', '\0', '|1:', ':|', 'a', 'b');
const anyUnit = fc.oneof(
  { arbitrary: nasty, weight: 6 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 3 },
  { arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)), weight: 1 },
);
const field = fc.string({ unit: anyUnit, maxLength: 6 });
const fields = fc.array(field, { maxLength: 5 });
// A tiny alphabet, so that independent draws are often equal or nearly equal.
const tinyField = fc.string({ unit: fc.constantFrom('|', ':', '1', 'a'), maxLength: 3 });
const tinyFields = fc.array(tinyField, { maxLength: 3 });
const kind = fc.constantFrom(...KINDS);

/** Second tuples built to look like the first one's encoding (the classic forgery shapes). */
function forgeries(k: KeyKind, a: string[]): [KeyKind, string[]][] {
  const out: [KeyKind, string[]][] = [];
  const body = cacheKey(k, ...a).slice(k.length);
  out.push([k, [body]]); // the whole encoding as one field
  if (body.startsWith('|')) out.push([k, [body.slice(1)]]);
  for (let i = 0; i + 1 < a.length; i++) {
    // two adjacent fields merged into one that contains the second's encoding
    const merged = `${a[i]}|${(a[i + 1] as string).length}:${a[i + 1]}`;
    out.push([k, [...a.slice(0, i), merged, ...a.slice(i + 2)]]);
  }
  for (let i = 0; i < a.length; i++) {
    const f = a[i] as string;
    for (let cut = 0; cut <= f.length; cut++) {
      // one field split in two
      out.push([k, [...a.slice(0, i), f.slice(0, cut), f.slice(cut), ...a.slice(i + 1)]]);
    }
  }
  out.push([k, [...a, '']], [k, ['', ...a]], [k, a.slice(0, -1)]);
  return out;
}

describe('cacheKey', () => {
  it('is the same function of (kind, fields) every time, and parses back to exactly its input', () => {
    fc.assert(
      fc.property(kind, fields, (k, a) => {
        const key = cacheKey(k, ...a);
        expect(key).toBe(cacheKey(k, ...[...a]));
        expect(kindOf(key)).toBe(k);
        expect(parseKey(key)).toEqual({ kind: k, fields: a });
      }),
      { numRuns: 10_000 },
    );
  });

  it('never gives two different tuples the same key (random pairs over a tiny alphabet)', () => {
    let equalTuples = 0;
    fc.assert(
      fc.property(kind, tinyFields, kind, tinyFields, (ka, a, kb, b) => {
        const same = sameTuple(ka, a, kb, b);
        if (same) equalTuples += 1;
        expect(cacheKey(ka, ...a) === cacheKey(kb, ...b)).toBe(same);
      }),
      { numRuns: 10_000 },
    );
    // The alphabet is small enough that the "equal" side of the property is exercised too.
    expect(equalTuples).toBeGreaterThan(10);
  });

  it('never gives a forged tuple (merged, split, padded fields) the key of the original', () => {
    let forged = 0;
    fc.assert(
      fc.property(kind, fields, kind, (k, a, other) => {
        const key = cacheKey(k, ...a);
        for (const [kb, b] of [...forgeries(k, a), ...forgeries(other, a)]) {
          forged += 1;
          // (a plain comparison: ~100 forgeries a run, a million in all)
          if ((key === cacheKey(kb, ...b)) !== sameTuple(k, a, kb, b))
            throw new Error(`${JSON.stringify([k, a])} and ${JSON.stringify([kb, b])} share ${key}`);
        }
      }),
      { numRuns: 10_000 },
    );
    expect(forged).toBeGreaterThan(50_000);
  });

  it('keeps hand-picked near-collisions apart', () => {
    const cases: [KeyKind, string[]][] = [
      ['gen', ['a|1:b']],
      ['gen', ['a', 'b']],
      ['gen', ['']],
      ['gen', []],
      ['gen', ['', '']],
      ['gen', ['1:a']],
      ['gen', ['1', 'a']],
      ['gen', ['', '1:a']],
      ['gen', ['|1:a']],
      ['gen', ['a']],
      ['gen', ['a\0']],
      ['gen', ['\0', 'a']],
      ['gen', ['|']],
      ['gen', [':']],
      ['gen', ['0:']],
      ['gen', ['10:aaaaaaaaaa']],
      ['gen', ['aaaaaaaaaa']],
      ['mems', ['a']],
      ['media', ['a']],
      ['gen', ['😀']],
      ['gen', ['\ud83d', '\ude00']],
    ];
    const keys = cases.map(([k, f]) => cacheKey(k, ...f));
    expect(new Set(keys).size).toBe(cases.length);
    expect(cacheKey('gen', 'a|1:b')).toBe('gen|5:a|1:b');
    expect(cacheKey('gen', 'a', 'b')).toBe('gen|1:a|1:b');
    expect(cacheKey('gen', '')).toBe('gen|0:');
    expect(cacheKey('gen')).toBe('gen');
    expect(cacheKey('gen', '1:a')).toBe('gen|3:1:a');
  });

  it('kinds cannot take part in a forgery: none contains the separator, none is empty', () => {
    // With arbitrary kind strings cacheKey('a|1:b') === cacheKey('a', 'b'): injectivity rests on
    // kinds being the fixed, separator-free KeyKind set, which the type enforces.
    for (const k of KINDS) {
      expect(k).toMatch(/^[a-z]+$/);
      expect(parseKey(cacheKey(k, 'x')).kind).toBe(k);
    }
  });
});

describe('oneFieldKey (the keys a check builds on every lookup)', () => {
  it('builds exactly cacheKey(kind, id) for every id, in any order, the empty id first included', () => {
    fc.assert(
      fc.property(kind, fc.array(field, { minLength: 1, maxLength: 12 }), (k, ids) => {
        const key = oneFieldKey(k);
        // Repeats and alternations, so that the one-entry memory is hit, missed and overwritten.
        for (const id of [...ids, ...ids.slice().reverse(), ids[0] as string, ids[0] as string])
          expect(key(id)).toBe(cacheKey(k, id));
      }),
    );
    expect(oneFieldKey('gen')('')).toBe(cacheKey('gen', ''));
    expect(oneFieldKey('mems')('')).toBe('mems|0:');
  });

  it('gives the same key for an equal id built anew (each request parses its own), and follows a change of id', () => {
    const key = oneFieldKey('mems');
    const id = randomUUID();
    const first = key(id);
    // An equal id that is a different string object (as each request's JSON gives) finds it too.
    expect(key(`${id.slice(0, 10)}${id.slice(10)}`)).toBe(first);
    const other = randomUUID();
    expect(key(other)).toBe(cacheKey('mems', other));
    expect(key(id)).toBe(cacheKey('mems', id));
  });
});

describe('authz_key (SQL) builds the same keys as cacheKey', () => {
  const fx = useTestDatabase();

  const sqlKey = async (k: string, f: string[]) =>
    (await fx.sql.query<{ key: string }>('SELECT authz_key($1, VARIADIC $2::text[]) AS key', [k, f])).rows[0]
      ?.key;

  /*
   * Only ASCII without NUL is compared. PostgreSQL text cannot hold NUL at all, and its `length()`
   * counts characters (code points, in a UTF8 database) while JS `length` counts UTF-16 code units:
   * the two agree on ASCII and the rest of the BMP but not on astral characters ('😀' is 2 in JS,
   * 1 in SQL), and lone surrogates cannot even reach the database. That is harmless only as long as
   * every key the database must invalidate is ASCII: its triggers build keys from uuid::text and
   * hex-encoded hashes, and the app's side must build those same keys (checked below); see the last
   * test for a key the app builds from input that is not ASCII.
   */
  const asciiUnit = fc.oneof(
    fc.constantFrom('|', ':', '0', '1', '9', '|1:', ' ', "'", '\\', '"', '%', '_'),
    fc.integer({ min: 1, max: 0x7f }).map((c) => String.fromCharCode(c)),
  );
  const realisticField = fc.oneof(
    fc.uuid(),
    fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')),
    fc.string({ unit: asciiUnit, maxLength: 40 }),
    fc.constant(''),
  );

  it('for uuids, hex hashes and ASCII strings with separators (500 samples, and the edge cases)', async () => {
    const { rows } = await fx.sql.query<{ server_encoding: string }>('SHOW server_encoding');
    expect(rows[0]?.server_encoding).toBe('UTF8');
    const samples = fc.sample(fc.tuple(kind, fc.array(realisticField, { maxLength: 4 })), {
      numRuns: 500,
      seed: 20_260_604,
    });
    samples.push(
      ['gen', []],
      ['gen', ['']],
      ['gen', ['', '']],
      ['gen', ['a|1:b']],
      ['gen', ['a', 'b']],
      ['gen', ['1:a']],
      ['svckey', [createHash('sha256').update(randomBytes(32)).digest('hex')]],
      ['sess', [randomUUID()]],
      ['mems', ['x'.repeat(1000)]],
    );
    for (const [k, f] of samples) expect(await sqlKey(k, f)).toBe(cacheKey(k, ...f));
  });

  it('for the keys the triggers publish: the same string the app looks up', async () => {
    const id = randomUUID();
    const hash = createHash('sha256').update('a secret').digest();
    const { rows } = await fx.sql.query<{ gen: string; svckey: string }>(
      `SELECT authz_key('gen', $1::uuid::text) AS gen, authz_key('svckey', encode($2::bytea, 'hex')) AS svckey`,
      [id.toUpperCase(), hash],
    );
    // The app lower-cases ids before building keys (engine `normalise`); uuid::text is lower case.
    expect(rows[0]?.gen).toBe(cacheKey('gen', id.toLowerCase()));
    expect(rows[0]?.svckey).toBe(cacheKey('svckey', hash.toString('hex')));
  });

  it('differs from cacheKey beyond the BMP (why the comparison above is ASCII only)', async () => {
    expect(await sqlKey('gen', ['é'])).toBe(cacheKey('gen', 'é'));
    expect(cacheKey('gen', '😀')).toBe('gen|2:😀');
    expect(await sqlKey('gen', ['😀'])).toBe('gen|1:😀');
  });
});

describe('keys the app builds from request input', () => {
  const fx = useTestApp();

  // Caller-chosen ids that are not uuids name nothing: answered without ever becoming a cache key,
  // so every key stays ASCII with an identical SQL twin, and nobody can fill the caches with junk.
  it('every key cached for a check is ASCII (ids that are not uuids never reach the cache)', async () => {
    const user = await signUp(fx.app);
    for (const id of ['é😀|1:x', '\ud800', '\udc00']) {
      const res = await fx.call(user, 'POST', '/authz/check', {
        resource: { type: 'generation', id },
        permission: 'view',
      });
      expect(res.statusCode).toBe(200);
      expect(res.json().allowed).toBe(false);
    }
    const keys = [...fx.t.pipeline.cache.entries()].map(([key]) => key);
    expect(keys.filter((key) => key.startsWith('gen|'))).toEqual([]);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the whole ASCII range is the point
    expect(keys.every((key) => /^[\x00-\x7f]*$/.test(key))).toBe(true);
  });
});
