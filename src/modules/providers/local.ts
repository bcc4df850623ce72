import { createHash } from 'node:crypto';
import sharp, { type OverlayOptions } from 'sharp';
import type { GeneratedMedia, GenerationJob, ProgressCallback, Provider } from './types.js';
import { PermanentProviderError } from './types.js';

/**
 * The offline provider: paints a layered "landscape" (sky gradient, glowing orb, soft clouds,
 * misty ridges, grain) whose palette comes from the prompt's words and whose composition comes
 * from a PRNG seeded by the request. Everything is a pure function of the job, so the same job
 * always yields the same bytes — tests, caches and content-addressed storage rely on that.
 */

const MIN_SIDE = 64;
const MAX_SIDE = 4096;
const GRAIN_TILE = 256;
const REFERENCE_OPACITY = 0.4;

export interface LocalProviderOptions {
  /** Pause per simulated denoising step; 0 keeps tests fast while still yielding to the event loop. */
  stepDelayMs?: number;
}

export function createLocalProvider(options: LocalProviderOptions = {}): Provider {
  const stepDelayMs = Math.max(0, options.stepDelayMs ?? 0);
  return {
    name: 'local',
    async generate(job: GenerationJob, signal: AbortSignal, onProgress: ProgressCallback) {
      validate(job);
      signal.throwIfAborted();
      const steps = job.steps;
      for (let i = 1; i <= steps; i++) {
        await pause(stepDelayMs, signal);
        signal.throwIfAborted();
        // 100 is reserved for "bytes ready", so the last simulated step stops at 99.
        onProgress(Math.min(99, Math.floor((100 * i) / steps)));
      }
      const media = await render(job);
      signal.throwIfAborted();
      onProgress(100);
      return [media];
    },
  };
}

function validate(job: GenerationJob): void {
  for (const [name, value] of [
    ['width', job.width],
    ['height', job.height],
  ] as const) {
    if (!Number.isInteger(value) || value < MIN_SIDE || value > MAX_SIDE) {
      throw new PermanentProviderError(`${name} must be an integer between ${MIN_SIDE} and ${MAX_SIDE}`);
    }
  }
  if (!Number.isInteger(job.steps) || job.steps < 1) {
    throw new PermanentProviderError('steps must be a positive integer');
  }
  if (!Number.isFinite(job.seed)) {
    throw new PermanentProviderError('seed must be a finite number');
  }
}

/** Resolves after `ms` (or on the next turn when 0) and rejects as soon as the signal aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    let immediate: NodeJS.Immediate | undefined;
    const onAbort = () => {
      if (timer) clearTimeout(timer);
      if (immediate) clearImmediate(immediate);
      reject(signal.reason);
    };
    const done = () => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    if (ms > 0) timer = setTimeout(done, ms);
    else immediate = setImmediate(done);
  });
}

async function render(job: GenerationJob): Promise<GeneratedMedia> {
  const { width, height } = job;
  // Steps only change the grain, not the composition: like a real sampler, more steps refine the
  // same picture instead of producing another one.
  const rng = seededRandom(
    JSON.stringify(['velro-local-v1', job.modelId, job.prompt, job.negativePrompt ?? '', job.seed]),
  );
  const svg = buildScene(rng, job.prompt, job.negativePrompt ?? '', width, height);
  const layers: OverlayOptions[] = [];
  if (job.referenceImage) layers.push(await referenceLayer(job.referenceImage.data, width, height));
  layers.push(grainLayer(rng, job.steps, Math.min(GRAIN_TILE, width, height)));

  const data = await sharp(Buffer.from(svg))
    .resize(width, height, { fit: 'fill' })
    .composite(layers)
    .removeAlpha()
    .png({ compressionLevel: 9, adaptiveFiltering: false })
    .toBuffer();
  return { mime: 'image/png', width, height, data };
}

async function referenceLayer(input: Buffer, width: number, height: number): Promise<OverlayOptions> {
  let rgb: Buffer;
  try {
    const { data, info } = await sharp(input)
      .rotate()
      .resize(width, height, { fit: 'cover', position: 'centre' })
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== width || info.height !== height)
      throw new Error('unexpected layout');
    rgb = data;
  } catch {
    // A reference that cannot be decoded will not decode on a retry either.
    throw new PermanentProviderError('reference image could not be decoded');
  }
  // sharp has no per-layer opacity, so the partial blend is baked into an explicit alpha channel.
  const alpha = Math.round(255 * REFERENCE_OPACITY);
  const rgba = Buffer.allocUnsafe(width * height * 4);
  for (let src = 0, dst = 0; src < rgb.length; src += 3, dst += 4) {
    rgba[dst] = rgb[src]!;
    rgba[dst + 1] = rgb[src + 1]!;
    rgba[dst + 2] = rgb[src + 2]!;
    rgba[dst + 3] = alpha;
  }
  return { input: rgba, raw: { width, height, channels: 4 } };
}

/** Film grain whose strength falls with the step count, so "fewer denoising steps" is visible. */
function grainLayer(rng: Rng, steps: number, side: number): OverlayOptions {
  // Kept subtle: grain is incompressible, so it costs PNG size and zlib time at level 9.
  const amplitude = Math.min(24, 3 + 24 / Math.sqrt(steps));
  // sharp refuses an overlay larger than the image, even a tiled one.
  const tile = Buffer.allocUnsafe(side * side * 4);
  for (let i = 0; i < tile.length; i += 4) {
    const v = Math.round(128 + (rng() + rng() - 1) * amplitude);
    tile[i] = v;
    tile[i + 1] = v;
    tile[i + 2] = v;
    tile[i + 3] = 255;
  }
  return {
    input: tile,
    raw: { width: side, height: side, channels: 4 },
    tile: true,
    blend: 'overlay',
  };
}

// ---------------------------------------------------------------------------------------------
// Randomness

type Rng = () => number;

/** sfc32 over the first 128 bits of SHA-256: tiny, fast, and identical on every platform. */
function seededRandom(material: string): Rng {
  const digest = createHash('sha256').update(material).digest();
  let a = digest.readUInt32LE(0);
  let b = digest.readUInt32LE(4);
  let c = digest.readUInt32LE(8);
  let d = digest.readUInt32LE(12);
  const next = () => {
    a >>>= 0;
    b >>>= 0;
    c >>>= 0;
    d >>>= 0;
    let t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    t = (t + d) | 0;
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  // The first outputs of sfc32 are correlated with the seed words; discard them.
  for (let i = 0; i < 12; i++) next();
  return next;
}

const between = (rng: Rng, lo: number, hi: number) => lo + (hi - lo) * rng();

// ---------------------------------------------------------------------------------------------
// Palette

interface Hint {
  hue: number;
  /** How dark the sky is, 0 (noon) to 1 (midnight). */
  dark?: number;
}

// Enough vocabulary that common prompts get a fitting mood; unknown words still get a stable hue.
const HINTS: Record<string, Hint> = {
  red: { hue: 2 },
  orange: { hue: 28 },
  yellow: { hue: 52 },
  green: { hue: 125 },
  teal: { hue: 175 },
  cyan: { hue: 188 },
  blue: { hue: 218 },
  purple: { hue: 275 },
  violet: { hue: 268 },
  pink: { hue: 335 },
  magenta: { hue: 312 },
  gold: { hue: 44 },
  golden: { hue: 42 },
  silver: { hue: 210, dark: 0.2 },
  dusk: { hue: 18, dark: 0.55 },
  sunset: { hue: 22, dark: 0.35 },
  twilight: { hue: 285, dark: 0.6 },
  dawn: { hue: 32, dark: 0.2 },
  sunrise: { hue: 36, dark: 0.2 },
  morning: { hue: 45, dark: 0.05 },
  noon: { hue: 205, dark: 0 },
  day: { hue: 205, dark: 0.05 },
  night: { hue: 232, dark: 0.85 },
  midnight: { hue: 238, dark: 0.95 },
  moon: { hue: 222, dark: 0.75 },
  moonlight: { hue: 220, dark: 0.75 },
  star: { hue: 245, dark: 0.8 },
  stars: { hue: 245, dark: 0.8 },
  galaxy: { hue: 270, dark: 0.9 },
  space: { hue: 250, dark: 0.95 },
  storm: { hue: 215, dark: 0.6 },
  fog: { hue: 205, dark: 0.15 },
  mist: { hue: 200, dark: 0.1 },
  ocean: { hue: 198 },
  sea: { hue: 196 },
  beach: { hue: 190 },
  lake: { hue: 200 },
  river: { hue: 195 },
  water: { hue: 195 },
  wave: { hue: 192 },
  waves: { hue: 192 },
  lighthouse: { hue: 205 },
  harbor: { hue: 210 },
  forest: { hue: 135 },
  tree: { hue: 120 },
  trees: { hue: 120 },
  jungle: { hue: 140 },
  garden: { hue: 110 },
  meadow: { hue: 95 },
  moss: { hue: 100 },
  spring: { hue: 105 },
  summer: { hue: 50 },
  autumn: { hue: 26 },
  fall: { hue: 26 },
  winter: { hue: 200, dark: 0.1 },
  snow: { hue: 200, dark: 0.05 },
  ice: { hue: 190 },
  glacier: { hue: 188 },
  desert: { hue: 36 },
  sand: { hue: 40 },
  dune: { hue: 34 },
  dunes: { hue: 34 },
  mountain: { hue: 215 },
  mountains: { hue: 215 },
  valley: { hue: 115 },
  fire: { hue: 12 },
  flame: { hue: 14 },
  lava: { hue: 8, dark: 0.6 },
  volcano: { hue: 8, dark: 0.5 },
  ember: { hue: 16, dark: 0.6 },
  rose: { hue: 345 },
  flower: { hue: 330 },
  flowers: { hue: 330 },
  blossom: { hue: 340 },
  cherry: { hue: 345 },
  lavender: { hue: 268 },
  neon: { hue: 305, dark: 0.7 },
  cyberpunk: { hue: 300, dark: 0.75 },
  city: { hue: 250, dark: 0.4 },
  castle: { hue: 260, dark: 0.3 },
  dragon: { hue: 0, dark: 0.4 },
  cat: { hue: 30 },
  dog: { hue: 35 },
  coffee: { hue: 25, dark: 0.3 },
};

interface Palette {
  skyTop: string;
  skyMid: string;
  horizon: string;
  orb: string;
  glow: string;
  cloud: (rng: Rng) => string;
  ridge: (depth: number) => { top: string; bottom: string };
  mist: string;
  dark: number;
}

function wordHue(word: string): number {
  return createHash('sha256').update(word).digest().readUInt16LE(0) % 360;
}

/** Distance from warm orange on the colour wheel: the warmer hue belongs at the horizon. */
const warmth = (hue: number) => -Math.min(Math.abs(hue - 30), 360 - Math.abs(hue - 30));

function buildPalette(rng: Rng, prompt: string, negativePrompt: string): Palette {
  const banned = new Set(words(negativePrompt));
  const promptWords = words(prompt).filter((w) => !banned.has(w));
  const hints = promptWords.map((w) => HINTS[w]).filter((h): h is Hint => h !== undefined);
  const fallback = promptWords.filter((w) => w.length > 2 && !STOP_WORDS.has(w)).map(wordHue);

  const hues = [...hints.map((h) => h.hue), ...fallback];
  const first = hues[0] ?? between(rng, 0, 360);
  // Without a second hint, pick a harmonious partner so the sky and the horizon still contrast.
  const offsets = [150, 180, 210, 40, -40, 120];
  const second =
    hues.find((h) => hueDistance(h, first) > 50) ?? first + offsets[Math.floor(rng() * offsets.length)]!;
  const jitter = between(rng, -12, 12);
  const [warmer, cooler] = warmth(first) >= warmth(second) ? [first, second] : [second, first];
  const horizonHue = warmer + jitter;
  // A green or orange zenith looks wrong however apt the word; lean the sky toward a real sky blue.
  const skyHue = mixHue(cooler + jitter, 215, 0.5);
  // The prompt's first colourful word is usually its subject, so it colours the land.
  const groundHue = first + jitter;
  const darks = hints.map((h) => h.dark).filter((d): d is number => d !== undefined);
  const dark = clamp(
    (darks.length ? Math.max(...darks) : between(rng, 0, 0.3)) + between(rng, -0.08, 0.08),
    0,
    1,
  );
  const sat = between(rng, 48, 70);

  const skyTop = hsl(skyHue + 8, sat * 0.8, lerp(62, 12, dark));
  const skyMid = hsl(mixHue(skyHue, horizonHue, 0.55), sat * 0.75, lerp(74, 38, dark));
  const horizon = hsl(horizonHue, sat + 18, lerp(86, 64, dark));
  const cloudHues = [skyHue, horizonHue, mixHue(skyHue, horizonHue, 0.5)];
  return {
    skyTop,
    skyMid,
    horizon,
    orb: hsl(horizonHue + 12, 95, lerp(97, 88, dark)),
    glow: hsl(horizonHue + 6, 90, lerp(88, 70, dark)),
    cloud: (r) => hsl(cloudHues[Math.floor(r() * cloudHues.length)]!, sat, lerp(90, 70, dark)),
    ridge: (depth) => {
      // Far ridges melt into the horizon haze; near ones are deep and saturated (aerial perspective).
      const hue = mixHue(mixHue(horizonHue, skyHue, 0.5), groundHue, 0.3 + 0.7 * depth);
      const light = lerp(lerp(72, 48, dark), lerp(24, 7, dark), depth);
      return {
        top: hsl(hue, lerp(sat * 0.6, sat * 0.9, depth), light + 6),
        bottom: hsl(hue + 10, lerp(sat * 0.5, sat, depth), light - 4),
      };
    },
    mist: hsl(horizonHue, sat * 0.7, lerp(88, 60, dark)),
    dark,
  };
}

const STOP_WORDS = new Set([
  'the',
  'and',
  'with',
  'for',
  'from',
  'into',
  'over',
  'under',
  'near',
  'very',
  'its',
]);

function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

function hueDistance(a: number, b: number): number {
  const d = Math.abs((((a - b) % 360) + 360) % 360);
  return Math.min(d, 360 - d);
}

/** Interpolates along the shorter arc, so mixing 350° and 10° gives red, not cyan. */
function mixHue(a: number, b: number, t: number): number {
  const delta = ((((b - a) % 360) + 540) % 360) - 180;
  return a + delta * t;
}

const lerp = (a: number, b: number, t: number) => a + (b - a) * t;
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

function hsl(hue: number, saturation: number, lightness: number): string {
  const h = (((hue % 360) + 360) % 360) / 360;
  const s = clamp(saturation, 0, 100) / 100;
  const l = clamp(lightness, 0, 100) / 100;
  const q = l < 0.5 ? l * (1 + s) : l + s - l * s;
  const p = 2 * l - q;
  const channel = (t: number) => {
    const x = t < 0 ? t + 1 : t > 1 ? t - 1 : t;
    const v = x < 1 / 6 ? p + (q - p) * 6 * x : x < 1 / 2 ? q : x < 2 / 3 ? p + (q - p) * (2 / 3 - x) * 6 : p;
    return Math.round(v * 255)
      .toString(16)
      .padStart(2, '0');
  };
  return `#${channel(h + 1 / 3)}${channel(h)}${channel(h - 1 / 3)}`;
}

// ---------------------------------------------------------------------------------------------
// Scene

/** Rounded so the SVG text, and therefore the raster, cannot drift with float formatting. */
const n = (v: number) => (Math.round(v * 10) / 10).toString();

function buildScene(rng: Rng, prompt: string, negativePrompt: string, width: number, height: number): string {
  const p = buildPalette(rng, prompt, negativePrompt);
  const unit = Math.min(width, height);
  const defs: string[] = [];
  const body: string[] = [];

  defs.push(
    `<linearGradient id="sky" x1="0" y1="0" x2="0" y2="1">` +
      `<stop offset="0" stop-color="${p.skyTop}"/>` +
      // The horizon band sits just above the far ridges, where a real sky is brightest.
      `<stop offset="${n(between(rng, 0.22, 0.32))}" stop-color="${p.skyMid}"/>` +
      `<stop offset="${n(between(rng, 0.44, 0.52))}" stop-color="${p.horizon}"/>` +
      `<stop offset="1" stop-color="${p.horizon}"/></linearGradient>`,
  );
  body.push(`<rect width="${width}" height="${height}" fill="url(#sky)"/>`);

  // Stars only make sense in a dark sky; they stay in the upper part, above the glow.
  if (p.dark > 0.5) {
    const count = Math.round(((width * height) / 4000) * (p.dark - 0.4));
    const stars: string[] = [];
    for (let i = 0; i < count; i++) {
      const y = height * 0.5 * rng() ** 1.6;
      stars.push(
        `<circle cx="${n(rng() * width)}" cy="${n(y)}" r="${n(between(rng, 0.4, 1.3) * Math.max(1, unit / 700))}" ` +
          `fill-opacity="${n(between(rng, 0.25, 0.9) * (1 - y / (height * 0.55)))}"/>`,
      );
    }
    body.push(`<g fill="#fff">${stars.join('')}</g>`);
  }

  const orbX = width * between(rng, 0.22, 0.78);
  const orbY = height * between(rng, 0.2, 0.4);
  const orbR = unit * between(rng, 0.045, 0.09);
  defs.push(
    `<radialGradient id="glow"><stop offset="0" stop-color="${p.glow}" stop-opacity="0.85"/>` +
      `<stop offset="0.35" stop-color="${p.glow}" stop-opacity="0.3"/>` +
      `<stop offset="1" stop-color="${p.glow}" stop-opacity="0"/></radialGradient>`,
    `<radialGradient id="orb"><stop offset="0" stop-color="#fff"/>` +
      `<stop offset="0.7" stop-color="${p.orb}"/>` +
      `<stop offset="1" stop-color="${p.orb}" stop-opacity="0.6"/></radialGradient>`,
  );
  body.push(`<circle cx="${n(orbX)}" cy="${n(orbY)}" r="${n(orbR * 7)}" fill="url(#glow)"/>`);
  body.push(`<circle cx="${n(orbX)}" cy="${n(orbY)}" r="${n(orbR)}" fill="url(#orb)"/>`);

  // Clouds are clusters of radial-gradient blobs: soft edges without an expensive blur filter.
  const clouds = 3 + Math.floor(rng() * 4);
  for (let c = 0; c < clouds; c++) {
    const color = p.cloud(rng);
    const id = `cloud${c}`;
    defs.push(
      `<radialGradient id="${id}"><stop offset="0" stop-color="${color}" stop-opacity="${n(between(rng, 0.35, 0.6))}"/>` +
        `<stop offset="1" stop-color="${color}" stop-opacity="0"/></radialGradient>`,
    );
    const cx = width * between(rng, -0.1, 1.1);
    const cy = height * between(rng, 0.08, 0.45);
    const spread = unit * between(rng, 0.12, 0.3);
    const puffs = 3 + Math.floor(rng() * 4);
    for (let i = 0; i < puffs; i++) {
      const rx = spread * between(rng, 0.6, 1.3);
      body.push(
        `<ellipse cx="${n(cx + between(rng, -1.4, 1.4) * spread)}" cy="${n(cy + between(rng, -0.25, 0.25) * spread)}" ` +
          `rx="${n(rx)}" ry="${n(rx * between(rng, 0.28, 0.45))}" fill="url(#${id})"/>`,
      );
    }
  }

  const ridges = 4 + Math.floor(rng() * 2);
  for (let k = 0; k < ridges; k++) {
    const depth = k / (ridges - 1);
    const base = height * lerp(0.55, 0.86, depth) + height * between(rng, -0.02, 0.02);
    // Far layers are tall and jagged like mountains; near layers are low, rolling hills.
    const amplitude = height * lerp(0.16, 0.07, depth) * between(rng, 0.7, 1.2);
    const roughness = lerp(1, 0.25, depth);
    const colors = p.ridge(depth);
    defs.push(
      `<linearGradient id="ridge${k}" x1="0" y1="0" x2="0" y2="1">` +
        `<stop offset="0" stop-color="${colors.top}"/><stop offset="1" stop-color="${colors.bottom}"/></linearGradient>`,
    );
    body.push(
      `<path d="${ridgePath(rng, width, height, base, amplitude, roughness)}" fill="url(#ridge${k})"/>`,
    );
    if (k < ridges - 1) {
      // Haze settling in the valley behind the next ridge: this is what sells the depth.
      const mistTop = base - amplitude * 0.6;
      defs.push(
        `<linearGradient id="mist${k}" x1="0" y1="0" x2="0" y2="1">` +
          `<stop offset="0" stop-color="${p.mist}" stop-opacity="0"/>` +
          `<stop offset="1" stop-color="${p.mist}" stop-opacity="${n(lerp(0.55, 0.3, depth))}"/></linearGradient>`,
      );
      body.push(
        `<rect x="0" y="${n(mistTop)}" width="${width}" height="${n(height - mistTop)}" fill="url(#mist${k})"/>`,
      );
    }
  }

  defs.push(
    `<radialGradient id="vignette" cx="0.5" cy="0.45" r="0.75">` +
      `<stop offset="0.55" stop-color="#000" stop-opacity="0"/>` +
      `<stop offset="1" stop-color="#000" stop-opacity="${n(lerp(0.25, 0.45, p.dark))}"/></radialGradient>`,
  );
  body.push(`<rect width="${width}" height="${height}" fill="url(#vignette)"/>`);

  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    `<defs>${defs.join('')}</defs>${body.join('')}</svg>`
  );
}

/** A closed silhouette: a sum of sines plus jitter through a Catmull-Rom spline, filled to the bottom. */
function ridgePath(
  rng: Rng,
  width: number,
  height: number,
  base: number,
  amplitude: number,
  roughness: number,
): string {
  const count = Math.round(lerp(10, 28, roughness));
  const waves = [0, 1, 2].map((o) => ({
    freq: between(rng, 1, 2.2) * 2 ** o * Math.PI,
    phase: rng() * Math.PI * 2,
    weight: 0.55 ** o * (o === 2 ? roughness : 1),
  }));
  const total = waves.reduce((s, w) => s + w.weight, 0);
  const points: Array<[number, number]> = [];
  for (let i = 0; i <= count; i++) {
    const t = i / count;
    let y = 0;
    for (const w of waves) y += w.weight * Math.sin(w.freq * t + w.phase);
    y = y / total + (rng() - 0.5) * 0.35 * roughness;
    points.push([lerp(-0.05, 1.05, t) * width, base - amplitude * (0.5 + 0.5 * y)]);
  }
  let d = `M${n(points[0]![0])},${n(points[0]![1])}`;
  for (let i = 0; i < points.length - 1; i++) {
    const p0 = points[Math.max(0, i - 1)]!;
    const p1 = points[i]!;
    const p2 = points[i + 1]!;
    const p3 = points[Math.min(points.length - 1, i + 2)]!;
    const c1x = p1[0] + (p2[0] - p0[0]) / 6;
    const c1y = p1[1] + (p2[1] - p0[1]) / 6;
    const c2x = p2[0] - (p3[0] - p1[0]) / 6;
    const c2y = p2[1] - (p3[1] - p1[1]) / 6;
    d += `C${n(c1x)},${n(c1y)} ${n(c2x)},${n(c2y)} ${n(p2[0])},${n(p2[1])}`;
  }
  const last = points[points.length - 1]!;
  return `${d}L${n(last[0])},${n(height + 2)}L${n(points[0]![0])},${n(height + 2)}Z`;
}
