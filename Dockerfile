# dynastream's container image: a release build on Debian bookworm, run on
# distroless (glibc, libgcc, CA certificates; no shell, no package manager).
#
#   docker build -t dynastream:0.1.0 .
#
# Base images are pinned by tag; where the build can reach the registries,
# pin them by digest as well (FROM image:tag@sha256:...).

FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies first, built against stub sources, so that a change to src/
# rebuilds dynastream alone and not the AWS SDK under it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin dynastream \
    && rm -rf src

COPY README.md ./
COPY src ./src
# COPY keeps the build context's modification times, which may be older than
# the stub build's outputs: touch the crate roots so cargo rebuilds them.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin dynastream \
    && cp target/release/dynastream /usr/local/bin/dynastream

# glibc, libgcc and /etc/ssl/certs (rustls reads the system's CA certificates).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="dynastream" \
      org.opencontainers.image.description="A long-running DynamoDB Streams consumer" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/dynastream /usr/local/bin/dynastream
# Logs are JSON lines on stderr for the log collector; records go to stdout.
ENV DYNASTREAM_LOG_FORMAT=json
# /metrics, /healthz, /readyz and /status.
EXPOSE 9464
# distroless' "nonroot" user, by number so that Kubernetes' runAsNonRoot can
# verify it without a runAsUser of its own.
USER 65532:65532
# What ECS and Kubernetes send: dynastream finishes and checkpoints the batches
# in flight, releases its leases and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dynastream"]
