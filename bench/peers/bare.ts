import Fastify from 'fastify';

/**
 * The ceiling every other case is compared with: Fastify 5 answering a tiny JSON route, nothing else.
 * Port from argv[2] or PORT; 0 lets the OS choose, and the `READY <port>` line tells the parent which.
 */
const port = Number(process.argv[2] ?? process.env.PORT ?? 0);

const app = Fastify({ logger: false });
app.get('/bare', async () => ({ ok: true }));

await app.listen({ host: '127.0.0.1', port });
const address = app.server.address();
const actualPort = typeof address === 'object' && address ? address.port : port;
process.stdout.write(`READY ${actualPort}\n`);

// Close cleanly so the parent's SIGTERM never has to escalate to SIGKILL.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    void app.close().finally(() => process.exit(0));
  });
}
