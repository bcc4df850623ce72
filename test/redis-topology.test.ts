/**
 * Which Redis the configuration names (issue 15, part 5): one server, Sentinel or Cluster, exactly
 * one at a time. A conflicting or malformed combination stops the start with a message that says
 * what to change; descriptions for people never carry a password.
 */
import { once } from 'node:events';
import { describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { closeRedis, openRedis, waitForRedis } from '../src/platform/redis.js';
import { describeRedisTopology, parseHostPorts, redisTopology } from '../src/platform/redis-topology.js';

const redisUrl = inject('redisUrl');
const topologyOf = (env: Record<string, string>) => redisTopology(loadConfig(env));

describe('Redis topology from the configuration', () => {
  it('names one server, a Sentinel master or a Cluster, or none', () => {
    expect(topologyOf({})).toBeNull();
    expect(topologyOf({ REDIS_URL: 'redis://:pw@cache:6379/2' })).toEqual({
      mode: 'single',
      url: 'redis://:pw@cache:6379/2',
    });
    expect(
      topologyOf({
        REDIS_SENTINELS: 's1:26379, s2 ,[::1]:26380',
        REDIS_SENTINEL_PASSWORD: 'sentinel-secret',
        REDIS_PASSWORD: 'data-secret',
      }),
    ).toEqual({
      mode: 'sentinel',
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26379 },
        { host: '::1', port: 26380 },
      ],
      master: 'mymaster',
      sentinelPassword: 'sentinel-secret',
      password: 'data-secret',
    });
    expect(topologyOf({ REDIS_SENTINELS: 's1', REDIS_SENTINEL_MASTER: 'velro' })).toMatchObject({
      mode: 'sentinel',
      master: 'velro',
    });
    expect(topologyOf({ REDIS_CLUSTER_NODES: '10.0.0.1:7000,10.0.0.2' })).toEqual({
      mode: 'cluster',
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: '10.0.0.2', port: 6379 },
      ],
    });
  });

  it('refuses to start with two ways to reach Redis, naming both', () => {
    expect(() => loadConfig({ REDIS_URL: 'redis://a:6379', REDIS_SENTINELS: 's1:26379' })).toThrow(
      /REDIS_URL and REDIS_SENTINELS are set[\s\S]*set exactly one/,
    );
    expect(() => loadConfig({ REDIS_URL: 'redis://a:6379', REDIS_CLUSTER_NODES: 'n1:7000' })).toThrow(
      /REDIS_URL and REDIS_CLUSTER_NODES are set/,
    );
    expect(() => loadConfig({ REDIS_SENTINELS: 's1', REDIS_CLUSTER_NODES: 'n1:7000' })).toThrow(
      /REDIS_SENTINELS and REDIS_CLUSTER_NODES are set/,
    );
  });

  it('refuses passwords that would be ignored, and addresses that are not host:port', () => {
    expect(() => loadConfig({ REDIS_URL: 'redis://a:6379', REDIS_PASSWORD: 'pw' })).toThrow(
      /with REDIS_URL put the password in the URL/,
    );
    expect(() => loadConfig({ REDIS_PASSWORD: 'pw' })).toThrow(/no Redis is configured/);
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: 'n1:7000', REDIS_SENTINEL_PASSWORD: 'pw' })).toThrow(
      /REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS/,
    );
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: 'n1:70000' })).toThrow(
      /REDIS_CLUSTER_NODES: 'n1:70000' is not host:port/,
    );
    expect(() => loadConfig({ REDIS_SENTINELS: 'redis://s1:26379' })).toThrow(
      /REDIS_SENTINELS: 'redis:\/\/s1:26379'/,
    );
    expect(() => parseHostPorts('REDIS_CLUSTER_NODES', ' , ', 6379)).toThrow(/names no host:port/);
  });

  it('describes each for people without a password', () => {
    const single = topologyOf({ REDIS_URL: 'redis://:hunter2@cache:6379/0' });
    const sentinel = topologyOf({ REDIS_SENTINELS: 's1,s2:26380', REDIS_PASSWORD: 'hunter2' });
    const cluster = topologyOf({ REDIS_CLUSTER_NODES: 'n1:7000,n2:7001', REDIS_PASSWORD: 'hunter2' });
    expect(describeRedisTopology(single as NonNullable<typeof single>)).toBe('redis://:*****@cache:6379/0');
    expect(describeRedisTopology(sentinel as NonNullable<typeof sentinel>)).toBe(
      "Sentinel, master 'mymaster' via s1:26379, s2:26380",
    );
    expect(describeRedisTopology(cluster as NonNullable<typeof cluster>)).toBe(
      'Cluster, seed nodes n1:7000, n2:7001',
    );
  });
});

describe.runIf(redisUrl)('the Redis client of a running service', () => {
  // A client that ends by itself never reconnects in ioredis: L2, shared limits and readiness would
  // stay down until a restart. The service's client must come back from any end it did not ask for
  // (here a plain disconnect stands in for the library giving up), and stay closed once closed.
  it('reconnects after an end nobody asked for, and stays closed after closeRedis', async () => {
    const redis = openRedis(loadConfig({ REDIS_URL: redisUrl as string }), () => {});
    if (!redis) throw new Error('no client for REDIS_URL');
    try {
      expect(await waitForRedis(redis, 5_000)).toBe(true);
      const ended = once(redis, 'end');
      const back = once(redis, 'ready');
      redis.disconnect();
      await ended;
      await back;
      expect(await redis.ping()).toBe('PONG');
    } finally {
      await closeRedis(redis);
    }
    if (redis.status !== 'end') await once(redis, 'end');
    // Past the first reconnect delay (100 ms): a closed client is not revived.
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(redis.status).toBe('end');
  });
});
