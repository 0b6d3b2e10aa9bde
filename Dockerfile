# syntax=docker/dockerfile:1
# Build stage: all dependencies, compile TypeScript.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Final stage: production dependencies and the built output only; no secrets, no sources, no dev tools.
FROM node:24-bookworm-slim
# MALLOC_MMAP_THRESHOLD_: glibc gives every buffer of 128 KiB or more (the upload buffers) its own mapping,
# returned to the system when freed; left to itself it raises the threshold after the first large free and keeps
# later uploads in a heap it never shrinks (peak memory with 64 uploads of 8 MB: 166-178 MiB without, 136-148
# with). Not lower: Node's HTTP parser copies every body into pieces of up to 64 KiB, which then come from the heap;
# at 65536 each piece was a fresh mapping, and its page faults were a third of an 8 MB request's CPU.
# --max-semi-space-size=2 (MiB): every request body arrives in buffers V8 counts against its old generation
# until a young collection frees them; with young collections this frequent, that count no longer forces a full
# collection every tenth of a second (about a quarter less CPU per 150 KB request, less peak memory; BENCHMARKS.md).
# `npm start` passes the same flag.
ENV NODE_ENV=production \
    PORT=3000 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    NODE_OPTIONS=--max-semi-space-size=2
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
USER node
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node directly (not npm) so that SIGTERM reaches the service and it can drain in-flight requests.
CMD ["node", "dist/server.js"]
