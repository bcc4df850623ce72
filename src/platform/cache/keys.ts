/**
 * The one way to build a cache key: `kind|<length>:<field>|<length>:<field>…`. Each field is
 * prefixed with its length, so no choice of field values — ids containing `|`, `:` or NUL, empty
 * strings — can make two different (kind, fields) tuples produce the same key, and nothing is
 * hashed, so nothing can collide (OpenFGA GHSA-32q6-rr98-cjqv). The database builds the same keys
 * for invalidation with `authz_key()` (migration 004); a test checks the two agree.
 *
 * The kinds of key (their prefix). Each fact kind (modules/authz/fact-kinds.ts, where its key,
 * columns and row mapping are declared) takes its prefix from here; `media` is not a fact.
 */
export type KeyKind = 'gen' | 'proj' | 'team' | 'mems' | 'sess' | 'user' | 'svckey' | 'media';

export function cacheKey(kind: KeyKind, ...fields: string[]): string {
  let key = kind;
  for (const field of fields) key += `|${field.length}:${field}`;
  return key;
}

/**
 * `cacheKey(kind, id)` as a function of `id` alone, for the keys a check builds on every lookup
 * (facts of one id). The same string, built without the rest-parameter array; and the last key
 * built is handed out again for the same id, the SAME string object, whose hash the engine's Map
 * has already computed: a bulk of checks by one subject builds its memberships key once instead of
 * once per check (measured: a lookup with a freshly built key costs ~2 × one with a kept key).
 */
export function oneFieldKey(kind: KeyKind): (id: string) => string {
  const head = `${kind}|`;
  let lastId = '';
  let lastKey = `${head}0:`;
  return (id) => {
    if (id !== lastId) {
      lastKey = `${head}${id.length}:${id}`;
      lastId = id;
    }
    return lastKey;
  };
}

export function kindOf(key: string): string {
  const bar = key.indexOf('|');
  return bar < 0 ? key : key.slice(0, bar);
}
