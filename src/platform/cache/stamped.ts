/** A cached value with the revision its database read saw (SPEC §6 rule 2). */
export interface Stamped<V = unknown> {
  /** null is a negative fact: "this does not exist" is cached too (rule 6). */
  v: V | null;
  r: number;
}
