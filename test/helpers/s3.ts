import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

/** The credentials s3rver accepts (its built-in account). */
export const S3RVER_CREDENTIALS = {
  AWS_ACCESS_KEY_ID: 'S3RVER',
  AWS_SECRET_ACCESS_KEY: 'S3RVER',
} as const;

/** What the tests use of s3rver (it ships no types). */
interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  on(
    event: 'event',
    listener: (event: { Records: { eventName: string; s3: { object: { key: string } } }[] }) => void,
  ): void;
}
type S3rverClass = new (options: Record<string, unknown>) => S3rverInstance;

export interface S3TestServer {
  /** e.g. `http://127.0.0.1:41234`. */
  endpoint: string;
  bucket: string;
  /** The variables that point Velro at this server (MEDIA_STORE=s3, S3_*, AWS_*). */
  env: Record<string, string>;
  /** A client of the test's own, to look at what the bucket holds. */
  client: S3Client;
  /** Object keys written so far (PUT events), in order. */
  puts: string[];
  /** Stops answering (connections are refused) and keeps the bucket; `start` serves it again on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A real S3-protocol server (s3rver) on a free port of 127.0.0.1, storing in a temporary folder
 * removed by `close`, with one bucket created through the S3 API.
 */
export async function startS3Server(bucket = 'velro-media'): Promise<S3TestServer> {
  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass;
  const directory = await mkdtemp(join(tmpdir(), 'velro-test-s3-'));
  const puts: string[] = [];
  const create = (port: number) => {
    const instance = new S3rver({ address: '127.0.0.1', port, silent: true, directory });
    instance.on('event', (event) => {
      for (const record of event.Records) {
        if (record.eventName.startsWith('ObjectCreated')) puts.push(record.s3.object.key);
      }
    });
    return instance;
  };
  let server: S3rverInstance | null = create(0);
  let client: S3Client | undefined;
  try {
    const { port } = await server.run();
    const endpoint = `http://127.0.0.1:${port}`;
    client = new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: {
        accessKeyId: S3RVER_CREDENTIALS.AWS_ACCESS_KEY_ID,
        secretAccessKey: S3RVER_CREDENTIALS.AWS_SECRET_ACCESS_KEY,
      },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    const own = client;
    return {
      endpoint,
      bucket,
      env: {
        MEDIA_STORE: 's3',
        S3_BUCKET: bucket,
        S3_ENDPOINT: endpoint,
        S3_REGION: 'us-east-1',
        S3_FORCE_PATH_STYLE: 'true',
        ...S3RVER_CREDENTIALS,
      },
      client: own,
      puts,
      async stop() {
        const current = server;
        server = null;
        await current?.close();
      },
      async start() {
        if (server) return;
        const next = create(port);
        await next.run();
        server = next;
      },
      async close() {
        own.destroy();
        await server?.close().catch(() => {});
        server = null;
        await rm(directory, { recursive: true, force: true });
      },
    };
  } catch (error) {
    client?.destroy();
    await server?.close().catch(() => {});
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
}
