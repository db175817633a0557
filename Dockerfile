# taskraft broker image.
#   docker build -t taskraft .
#   docker run -v taskraft-data:/var/lib/taskraft -p 7070:7070 -p 7071:7071 taskraft
# (one node: its Raft peer service stays on loopback. A cluster sets
# TASKRAFT_PEER_LISTEN=0.0.0.0:7072 and TASKRAFT_CLUSTER_SECRET on every node; see
# docker-compose.yml and deploy/README.md.)
# The two base images. Override them where Docker Hub is out of reach with equivalents
# built locally (tests/container/bases.sh builds them from Debian's mirror):
#   docker build --build-arg RUST_IMAGE=... --build-arg RUN_IMAGE=... .
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

# Build stage: the Rust toolchain (protoc is vendored, nothing else is needed). The
# registry and target dir are cache mounts, so a rebuild after a source change compiles
# the workspace's crates only; the binary is copied out of the cache in the same step.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin taskraft \
 && strip -o /usr/local/bin/taskraft target/release/taskraft

# Run stage: Debian slim (glibc, the binary's only dependency), a non-root user, data on
# a volume.
FROM ${RUN_IMAGE}
RUN groupadd --system --gid 10001 taskraft \
 && useradd --system --uid 10001 --gid taskraft --home-dir /var/lib/taskraft \
      --shell /usr/sbin/nologin taskraft \
 && mkdir -p /var/lib/taskraft \
 && chown taskraft:taskraft /var/lib/taskraft
COPY --from=build /usr/local/bin/taskraft /usr/local/bin/taskraft
USER 10001:10001
# The peer port defaults to loopback so that a lone container starts without a
# cluster secret (a node refuses an unauthenticated peer port anywhere else).
ENV TASKRAFT_LISTEN=0.0.0.0:7070 \
    TASKRAFT_HTTP=0.0.0.0:7071 \
    TASKRAFT_PEER_LISTEN=127.0.0.1:7072 \
    TASKRAFT_DATA_DIR=/var/lib/taskraft \
    TASKRAFT_LOG_FORMAT=json
VOLUME ["/var/lib/taskraft"]
# 7070: gRPC for clients; 7071: HTTP (/healthz, /readyz, /metrics, dashboard);
# 7072: the Raft peer service, for the other nodes only: never publish it to clients
# (`docker run -P` publishes every exposed port; use -p for 7070 and 7071).
EXPOSE 7070 7071 7072
# Ready = the node knows a leader. SIGTERM drains, hands leadership off, and exits.
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
  CMD ["taskraft", "probe", "--http", "127.0.0.1:7071", "--path", "/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["taskraft"]
CMD ["serve"]
