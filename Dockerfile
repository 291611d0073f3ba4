# dynastream's container images: a release build on Debian bookworm, run on
# distroless (glibc, libgcc, CA certificates; no shell, no package manager),
# plus images for unmodified Lambda handlers (Python, Node.js).
#
#   docker build -t dynastream:0.1.0 .                             # the worker
#   docker build --target python -t dynastream:0.1.0-python .      # + Python handlers
#   docker build --target node -t dynastream:0.1.0-node .          # + Node.js handlers
#
# The base images are build arguments whose defaults are the public images,
# fully qualified so that docker and podman resolve them alike. Pin them by
# digest (--build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:...)
# in a build that can reach the registries. ./scripts/image builds the same
# Dockerfile with local bases assembled from Debian's packages instead.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG PYTHON_IMAGE=docker.io/library/python:3.12-slim-bookworm
ARG NODE_IMAGE=docker.io/library/node:22-bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /build

# Dependencies first, built against stub sources, so that a change to src/
# rebuilds dynastream alone and not the AWS SDK under it. The manifest's other
# targets (the fault proxy, the benchmark suite) get stub files too, so the
# layer never depends on cargo overlooking a declared path; they are not built.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tools/fault_proxy benches/suite \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tools/fault_proxy/main.rs \
    && echo 'fn main() {}' > benches/suite/main.rs \
    && cargo build --release --locked --bin dynastream \
    && rm -rf src

COPY README.md ./
COPY src ./src
# COPY keeps the build context's modification times, which may be older than
# the stub build's outputs: touch the crate roots so cargo rebuilds them.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin dynastream \
    && cp target/release/dynastream /usr/local/bin/dynastream

# An unmodified Python Lambda handler under the exec processor. Put the
# handler in /var/task (Lambda's place for it) and name it in HANDLER, as
# Lambda's `module.function`; the image runs the adapter's example handler
# until you do. The base image must have `sh` (the exec processor runs the
# command through it) and python3.
FROM ${PYTHON_IMAGE} AS python
COPY --from=builder /usr/local/bin/dynastream /usr/local/bin/dynastream
COPY adapters/python/dynastream_lambda.py /opt/dynastream/dynastream_lambda.py
COPY adapters/python/example_handler.py /var/task/example_handler.py
WORKDIR /var/task
ENV HANDLER=example_handler.handler
# Single quotes keep $HANDLER for the shell the exec processor runs this with.
ENV DYNASTREAM_LOG_FORMAT=json \
    DYNASTREAM_PROCESSOR=exec \
    DYNASTREAM_EXEC_COMMAND='exec python3 /opt/dynastream/dynastream_lambda.py --path /var/task "$HANDLER"' \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 9464
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dynastream"]

# The same for a Node.js handler (`file.export` in HANDLER).
FROM ${NODE_IMAGE} AS node
COPY --from=builder /usr/local/bin/dynastream /usr/local/bin/dynastream
COPY adapters/node/dynastream-lambda.js /opt/dynastream/dynastream-lambda.js
COPY adapters/node/example_handler.js /var/task/example_handler.js
WORKDIR /var/task
ENV HANDLER=example_handler.handler
ENV DYNASTREAM_LOG_FORMAT=json \
    DYNASTREAM_PROCESSOR=exec \
    DYNASTREAM_EXEC_COMMAND='exec node /opt/dynastream/dynastream-lambda.js --path /var/task "$HANDLER"' \
    HOME=/tmp
EXPOSE 9464
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dynastream"]

# The worker (the default target): glibc, libgcc and /etc/ssl/certs (rustls
# reads the system's CA certificates).
FROM ${RUNTIME_IMAGE} AS runtime
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
