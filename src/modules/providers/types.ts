/**
 * What every image provider implements. The worker hands a provider one job at a time with an
 * AbortSignal (cancellation, timeout, shutdown) and a progress callback; the provider returns the
 * finished media as bytes. Providers do no database or storage work.
 */
export interface GenerationJob {
  generationId: string;
  modelId: string;
  /** The model's name at the provider (e.g. the remote API's model id). */
  providerModel: string;
  prompt: string;
  negativePrompt: string | null;
  width: number;
  height: number;
  seed: number;
  steps: number;
  /** Optional reference image sent with the request (image/*), already size-checked. */
  referenceImage: { mime: string; data: Buffer } | null;
  /** Everything else the caller set, validated against the model. */
  parameters: Record<string, unknown>;
}

export interface GeneratedMedia {
  mime: 'image/png' | 'image/webp' | 'image/jpeg';
  width: number;
  height: number;
  data: Buffer;
}

/** Whole percent, 0–100, non-decreasing. May be called often; callers throttle what they publish. */
export type ProgressCallback = (percent: number) => void;

export interface Provider {
  readonly name: string;
  generate(job: GenerationJob, signal: AbortSignal, onProgress: ProgressCallback): Promise<GeneratedMedia[]>;
}

/**
 * A failure the provider knows will not go away by retrying (bad request, content refused): the
 * worker fails the generation at once instead of using up its retries.
 */
export class PermanentProviderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentProviderError';
  }
}
