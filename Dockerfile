# syntax=docker/dockerfile:1
#
# The kestra-edge image: built with the Rust toolchain, run from a distroless base as a non-root
# user. Build it from the repository root (BuildKit, the default builder of current Docker):
#
#   docker build -t kestra-edge .
#   docker run --rm -p 8000:8000 kestra-edge --listen 0.0.0.0:8000 --demo
#
# Without arguments it runs with /etc/kestra-edge/kestra-edge.toml, a copy of
# examples/compose/kestra-edge.toml (Kestra at http://kestra:8080, context path /kestra): mount
# your own file there, or give your own arguments (`kestra-edge --help`), which replace CMD.

ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------------------------
# Debian 12 (bookworm), like the runtime image below: the binary links the same glibc.
FROM rust:${RUST_VERSION}-slim-bookworm AS build
# make: tikv-jemalloc-sys builds jemalloc, the binary's allocator, from source (the slim image
# has gcc but not make).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The crate registry, git checkouts and target/ live in BuildKit cache mounts, so a rebuild
# after a source change downloads nothing and recompiles only the workspace's own crates.
# target/ is a cache mount (not in the image), hence the copy out in the same step.
# Debug line tables are stripped for a smaller image; symbol names stay for backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p kestra-edge-gateway \
    && install -D -m 0755 target/release/kestra-edge /out/kestra-edge

# ---- run --------------------------------------------------------------------------------------
# glibc, libgcc, CA certificates (for https:// upstreams) and nothing else: no shell, no package
# manager. `nonroot` is uid/gid 65532, given as numbers so that Kubernetes' runAsNonRoot can
# check them.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kestra-edge /usr/local/bin/kestra-edge
COPY examples/compose/kestra-edge.toml /etc/kestra-edge/kestra-edge.toml
USER 65532:65532
# 8000: the proxy (listen); 9100: /metrics, /livez, /readyz (admin_listen). The Kubernetes
# example uses 8443 (HTTPS) and 8080 (redirect to HTTPS) instead of 8000.
EXPOSE 8000 9100
# No HEALTHCHECK: Docker runs it inside the container, and a distroless image has no shell or
# curl to run it with. Orchestrators probe from outside instead: Kubernetes' httpGet probes on
# /livez and /readyz (examples/kubernetes/deployment.yaml), or any HTTP check on port 9100.
# The process is PID 1 and handles SIGTERM itself: /readyz answers 503, then in-flight requests
# get --shutdown-grace (30 s) to finish.
ENTRYPOINT ["/usr/local/bin/kestra-edge"]
# Arguments given to `docker run` (or a Pod's `args`) replace these.
CMD ["--config", "/etc/kestra-edge/kestra-edge.toml"]
