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

export function kindOf(key: string): string {
  const bar = key.indexOf('|');
  return bar < 0 ? key : key.slice(0, bar);
}
