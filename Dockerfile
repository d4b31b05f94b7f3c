# syntax=docker/dockerfile:1
#
# The tidegate image: one binary for the proxy (`tidegate proxy --kube`) and the rollout
# controller (`tidegate controller`). Built with rustls and ring, so the binary needs only
# glibc and libgcc at run time, which the distroless cc image provides.
#
#   docker build -t ghcr.io/tidegate/tidegate:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts: a rebuild after a source change
# compiles only tidegate itself. The target directory does not outlive the RUN, so the
# binary is copied out of it.
RUN --mount=type=cache,id=tidegate-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=tidegate-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=tidegate-target,target=/src/target \
    cargo build --release --locked --bin tidegate \
    && install -D -m 0755 target/release/tidegate /out/tidegate

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tidegate" \
      org.opencontainers.image.description="Progressive-delivery L7 proxy and canary rollout controller" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tidegate /usr/local/bin/tidegate
USER nonroot
# 8080: the proxy's listener; 9901: the proxy's admin (/healthz, /metrics, /routes);
# 9902: the controller's /healthz, /readyz, /metrics.
EXPOSE 8080 9901 9902
ENTRYPOINT ["/usr/local/bin/tidegate"]
CMD ["--help"]
