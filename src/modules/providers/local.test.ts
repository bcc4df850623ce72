import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { createLocalProvider } from './local.js';
import { type GenerationJob, PermanentProviderError } from './types.js';

function job(overrides: Partial<GenerationJob> = {}): GenerationJob {
  return {
    generationId: 'gen-1',
    modelId: 'local-landscape',
    providerModel: 'landscape-v1',
    prompt: 'a lighthouse at dusk',
    negativePrompt: null,
    width: 256,
    height: 256,
    seed: 42,
    steps: 8,
    referenceImage: null,
    parameters: {},
    ...overrides,
  };
}

const provider = createLocalProvider();
const never = new AbortController().signal;
const ignore = () => {};

async function bytes(overrides: Partial<GenerationJob> = {}): Promise<Buffer> {
  const [media] = await provider.generate(job(overrides), never, ignore);
  return media!.data;
}

/** A reference with hard structure, so its influence cannot be lost in the scene's soft gradients. */
async function checkerboard(): Promise<Buffer> {
  const side = 128;
  const pixels = Buffer.alloc(side * side * 3);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const on = ((x >> 4) + (y >> 4)) % 2 === 0;
      const i = (y * side + x) * 3;
      pixels[i] = on ? 250 : 10;
      pixels[i + 1] = on ? 40 : 200;
      pixels[i + 2] = on ? 40 : 30;
    }
  }
  return sharp(pixels, { raw: { width: side, height: side, channels: 3 } })
    .png()
    .toBuffer();
}

describe('local provider', () => {
  it('is named local', () => {
    expect(provider.name).toBe('local');
  });

  it('renders byte-identical output for the same job', async () => {
    const a = await bytes();
    const b = await bytes();
    expect(a.equals(b)).toBe(true);
  });

  it('renders different output for a different seed or prompt', async () => {
    const base = await bytes();
    expect(base.equals(await bytes({ seed: 43 }))).toBe(false);
    expect(base.equals(await bytes({ prompt: 'a forest in the morning' }))).toBe(false);
  });

  it('renders visibly different images for different seeds, not just different bytes', async () => {
    const [a, b] = await Promise.all([1, 2].map((seed) => bytes({ seed, width: 64, height: 64 })));
    const rawA = await sharp(a!).raw().toBuffer();
    const rawB = await sharp(b!).raw().toBuffer();
    let diff = 0;
    for (let i = 0; i < rawA.length; i++) diff += Math.abs(rawA[i]! - rawB[i]!);
    expect(diff / rawA.length).toBeGreaterThan(8);
  });

  it('returns a PNG of exactly the requested size', async () => {
    for (const [width, height] of [
      [64, 64],
      [512, 768],
      [1024, 1024],
    ] as const) {
      const [media] = await provider.generate(job({ width, height }), never, ignore);
      expect(media).toMatchObject({ mime: 'image/png', width, height });
      const meta = await sharp(media!.data).metadata();
      expect(meta).toMatchObject({ format: 'png', width, height });
    }
  });

  it('is not a flat image', async () => {
    const stats = await sharp(await bytes()).stats();
    for (const channel of stats.channels.slice(0, 3)) {
      expect(channel.max - channel.min).toBeGreaterThan(60);
    }
  });

  it('reports non-decreasing whole percentages ending at 100', async () => {
    const seen: number[] = [];
    await provider.generate(job({ steps: 7 }), never, (p) => seen.push(p));
    expect(seen.length).toBeGreaterThanOrEqual(7);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThanOrEqual(seen[i - 1]!);
    for (const p of seen) {
      expect(Number.isInteger(p)).toBe(true);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThanOrEqual(100);
    }
    expect(seen.at(-1)).toBe(100);
  });

  it('stops promptly and reports nothing more once aborted', async () => {
    const slow = createLocalProvider({ stepDelayMs: 5 });
    const controller = new AbortController();
    const seen: number[] = [];
    let abortedAt = 0;
    const run = slow.generate(job({ steps: 20 }), controller.signal, (p) => {
      seen.push(p);
      if (seen.length === 2) {
        abortedAt = performance.now();
        controller.abort();
      }
    });
    const error = await run.then(
      () => null,
      (e: unknown) => e,
    );
    const elapsed = performance.now() - abortedAt;
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).name).toBe('AbortError');
    expect(elapsed).toBeLessThan(100);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(seen).toHaveLength(2);
  });

  it('rejects at once with the abort reason when the signal is already aborted', async () => {
    const controller = new AbortController();
    const reason = new Error('shutting down');
    controller.abort(reason);
    const seen: number[] = [];
    await expect(provider.generate(job(), controller.signal, (p) => seen.push(p))).rejects.toBe(reason);
    expect(seen).toEqual([]);
  });

  it('refuses sizes outside 64..4096 or not whole as a permanent error', async () => {
    for (const size of [
      { width: 63, height: 256 },
      { width: 256, height: 4097 },
      { width: 100.5, height: 256 },
      { width: Number.NaN, height: 256 },
    ]) {
      await expect(provider.generate(job(size), never, ignore)).rejects.toBeInstanceOf(
        PermanentProviderError,
      );
    }
  });

  it('blends a reference image in, deterministically', async () => {
    const reference = { mime: 'image/png', data: await checkerboard() };
    const plain = await bytes();
    const a = await bytes({ referenceImage: reference });
    const b = await bytes({ referenceImage: reference });
    expect(a.equals(b)).toBe(true);
    expect(a.equals(plain)).toBe(false);
    const meta = await sharp(a).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 256, height: 256 });
  });

  it('treats an undecodable reference image as a permanent error', async () => {
    const reference = { mime: 'image/png', data: Buffer.from('not an image') };
    await expect(provider.generate(job({ referenceImage: reference }), never, ignore)).rejects.toBeInstanceOf(
      PermanentProviderError,
    );
  });
});
