import { randomInt } from 'node:crypto';
import type { FieldIssue } from '../../platform/http/errors.js';
import { badRequest } from '../../platform/http/errors.js';
import type { Model } from '../models/catalogue.js';

export interface ImageParameters {
  width: number;
  height: number;
  seed: number;
  steps: number;
  guidance_scale: number;
}

const KNOWN = new Set(['width', 'height', 'seed', 'steps', 'guidance_scale']);
const MAX_SEED = 2 ** 32 - 1;

/**
 * Checks the caller's parameters against the model's limits and fills in the model's defaults.
 * A missing seed is drawn at random and recorded, so every generation can be reproduced exactly.
 * Unknown keys are refused: a typo (`widht`) must not silently fall back to a default.
 */
export function resolveParameters(model: Model, given: Record<string, unknown> | undefined): ImageParameters {
  const input = given ?? {};
  const issues: FieldIssue[] = [];
  for (const key of Object.keys(input)) {
    if (!KNOWN.has(key))
      issues.push({ field: `body.parameters.${key}`, message: 'is not a parameter of this model' });
  }
  const integer = (key: string, fallback: number, min: number, max: number, multipleOf = 1): number => {
    const value = input[key];
    if (value === undefined) return fallback;
    if (
      typeof value !== 'number' ||
      !Number.isInteger(value) ||
      value < min ||
      value > max ||
      value % multipleOf !== 0
    ) {
      const step = multipleOf > 1 ? `, a multiple of ${multipleOf}` : '';
      issues.push({
        field: `body.parameters.${key}`,
        message: `must be an integer from ${min} to ${max}${step}`,
      });
      return fallback;
    }
    return value;
  };
  const width = integer('width', model.default_width, model.min_width, model.max_width, 8);
  const height = integer('height', model.default_height, model.min_height, model.max_height, 8);
  const steps = integer('steps', model.default_steps, 1, model.max_steps);
  const seed = integer('seed', randomInt(0, MAX_SEED), 0, MAX_SEED);
  let guidance = 7;
  const g = input.guidance_scale;
  if (g !== undefined) {
    if (typeof g !== 'number' || !Number.isFinite(g) || g < 0 || g > 30) {
      issues.push({ field: 'body.parameters.guidance_scale', message: 'must be a number from 0 to 30' });
    } else guidance = g;
  }
  if (issues.length > 0) throw badRequest(`The parameters do not fit model ${model.id}`, issues);
  return { width, height, seed, steps, guidance_scale: guidance };
}
