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
# Runtime settings measured in BENCHMARKS.md. MALLOC_MMAP_THRESHOLD_: glibc gives every buffer of 128 KiB or more
# (an uploaded photo) its own mapping, returned when freed, instead of raising the threshold after the first large
# free and keeping later uploads in a heap it never shrinks; not lower, because Node's HTTP parser hands bodies over
# in pieces of up to 64 KiB, which are cheaper from the heap. --max-semi-space-size=2 (MiB): request bodies arrive in
# buffers V8 counts against its old generation until a young collection frees them; frequent young collections keep
# that count from forcing full collections under load. `npm start` passes the same flag.
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
