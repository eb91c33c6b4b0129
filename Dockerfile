# syntax=docker/dockerfile:1
#
# Multi-arch build (Raspberry Pi and x86 hosts):
#   docker buildx build --platform linux/arm64,linux/amd64 -t mesh-controller:latest .
# The builder runs on the target platform (under QEMU when cross-building), so any optional
# platform-specific package in node_modules matches the runtime's architecture.

FROM node:22-bookworm-slim AS build
WORKDIR /app
ENV npm_config_fund=false npm_config_audit=false
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY scripts scripts
COPY schemas schemas
COPY layers layers
COPY src src
RUN npm run build && npm prune --omit=dev --ignore-scripts \
  && mkdir -p /state && chmod 0700 /state

FROM gcr.io/distroless/nodejs22-debian12:nonroot
WORKDIR /app
COPY --from=build --chown=0:0 /app/package.json ./
COPY --from=build --chown=0:0 /app/node_modules ./node_modules
# Only the executable's bundle (dist/bin) and the status page's files; the per-module dist/ is
# for library consumers.
COPY --from=build --chown=0:0 /app/dist/bin ./dist/bin
COPY --from=build --chown=0:0 /app/dist/src/ui/static ./dist/src/ui/static
COPY --chown=0:0 examples/container.yaml /etc/mesh-controller/mesh.yaml
# The CA and workload keys live here, owned by the runtime user; mount a volume so they survive
# the container (a named volume copies this ownership on first use).
COPY --from=build --chown=65532:65532 /state /var/lib/mesh-controller
VOLUME ["/var/lib/mesh-controller"]
USER 65532:65532
ENV NODE_ENV=production LOG_FORMAT=json
# xDS (gRPC) and the admin HTTP server
EXPOSE 15010 15014
# The controller's /healthz (127.0.0.1:15014); an agent container sets MESH_HEALTHCHECK=15021
# (docker run cannot change an exec-form check without a shell; see src/bin/healthcheck.ts).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/nodejs/bin/node", "dist/bin/healthcheck.mjs"]
# V8 flags for a small footprint (docs/PERFORMANCE.md, "Memory: V8 flags"): --max-semi-space-size=2
# caps the young generation, which otherwise grows to 2 x 16 MB during start-up and stays (idle
# RSS ~25 MB less); --heap-growing-percent=50 lets the old generation grow to 1.5x what the last
# full collection kept, not up to ~2x (peak RSS with 1,000 xDS streams ~110 MB less). Start-up CPU
# and xDS push times stay within the noise. `npm start` runs the same flags; bench/startup.mjs,
# bench/xds.ts and test/container.test.ts read them from this line.
ENTRYPOINT ["/nodejs/bin/node", "--max-semi-space-size=2", "--heap-growing-percent=50", "dist/bin/mesh-controller.mjs"]
CMD ["run", "--config", "/etc/mesh-controller/mesh.yaml"]
