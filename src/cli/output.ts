import type { ParseArgsConfig } from 'node:util';
import { AppError } from '../platform/http/errors.js';

/** A failure the operator can act on: its message is printed as is. Exit 1, or 2 for bad usage. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly code = exitCode === 2 ? 'usage' : 'failed',
  ) {
    super(message);
  }
}

export const usageError = (message: string) => new CliError(message, 2);

export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;
export type Options = NonNullable<ParseArgsConfig['options']>;

export interface CommandContext {
  values: OptionValues;
  positionals: string[];
  out: Output;
}

export interface Command {
  name: string;
  summary: string;
  help: string;
  options: Options;
  run(ctx: CommandContext): Promise<void>;
}

/** Results go to stdout (text, or one JSON document with --json); progress and notes to stderr. */
export class Output {
  constructor(readonly json: boolean) {}

  result(human: string, data: unknown): void {
    process.stdout.write(this.json ? `${JSON.stringify(data, null, 2)}\n` : `${human}\n`);
  }

  note(message: string): void {
    process.stderr.write(`${message}\n`);
  }

  error(error: CliError): void {
    if (this.json) {
      process.stderr.write(`${JSON.stringify({ error: { code: error.code, message: error.message } })}\n`);
    } else {
      process.stderr.write(`velro: ${error.message}\n`);
    }
  }
}

export function stringOption(values: OptionValues, name: string): string | undefined {
  const value = values[name];
  return typeof value === 'string' ? value : undefined;
}

export function requiredString(values: OptionValues, name: string, what = `--${name}`): string {
  const value = stringOption(values, name)?.trim();
  if (!value) throw usageError(`${what} is required`);
  return value;
}

export function integerOption(
  values: OptionValues,
  name: string,
  min: number,
  max: number,
): number | undefined {
  const raw = stringOption(values, name);
  if (raw === undefined) return undefined;
  const value = /^-?\d+$/.test(raw.replaceAll('_', '').trim()) ? Number(raw.replaceAll('_', '')) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw usageError(`--${name} must be a whole number from ${min} to ${max} (got ${raw})`);
  }
  return value;
}

/** Service errors (not found, conflict, bad input) become the operator's message; others pass. */
export function asCliError(error: unknown): CliError | null {
  if (error instanceof CliError) return error;
  if (error instanceof AppError) {
    return new CliError(error.message, error.statusCode === 400 ? 2 : 1, error.code);
  }
  return null;
}

export const JSON_OPTION = { json: { type: 'boolean', default: false } } as const;
export const HELP_OPTION = { help: { type: 'boolean', short: 'h', default: false } } as const;
