# syntax=docker/dockerfile:1
# Velro API and generation worker: one image, compiled JavaScript, no TypeScript loader at run time.
#   docker build -t velro .
#   docker run -p 3000:3000 -e DATABASE_URL=... -e JWT_SECRET=... -e MEDIA_SIGNING_SECRET=... velro
#   worker only: docker run ... velro node dist/worker.js
# The README's "Running a fleet" section lists what to set; test/deploy-files.test.ts keeps the
# deploy files in step with the configuration schema and runs what `npm run build` produces.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATA_DIR=/tmp/velro
WORKDIR /app
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json ./
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root web ./web
# The code is owned by root and read-only to the process; it runs as the image's unprivileged user.
USER node
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT || 3000}/health`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# The primary forwards SIGTERM to every server process and waits for their drain.
STOPSIGNAL SIGTERM
CMD ["node", "dist/main.js"]
