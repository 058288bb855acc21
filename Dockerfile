# syntax=docker/dockerfile:1
#
# Multi-arch image of kube-gpu-metrics, cross-compiled (no emulation):
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/kube-gpu-metrics/kube-gpu-metrics:0.1.0 --push .
#
# The build stage runs on the builder's own platform and compiles for the
# target's; the final image is distroless (glibc, no shell), runs as non-root
# by default, and holds only the two binaries: kube-gpu-metrics (every mode)
# and kube-gpu-metrics-agent (the agent alone, which the DaemonSet runs with
# `command:`). The agent's manifest runs it as root
# with every capability dropped (see deploy/base/agent.yaml for why).

FROM --platform=$BUILDPLATFORM rust:1.88-bookworm AS build
ARG TARGETARCH
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-gnu > /rust-target; pkg=gcc-x86-64-linux-gnu ;; \
      arm64) echo aarch64-unknown-linux-gnu > /rust-target; pkg=gcc-aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    apt-get update; apt-get install -y --no-install-recommends "$pkg" libc6-dev; rm -rf /var/lib/apt/lists/*; \
    rustup target add "$(cat /rust-target)"
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
# hack/ holds the fake NVML that build.rs compiles and the manifest's
# examples; src/ embeds files from deploy/ (the reference HPA, the built-in
# Prometheus queries).
COPY hack hack
COPY src src
COPY deploy deploy
COPY benches benches
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kube-gpu-metrics --bin kube-gpu-metrics-agent --target "$(cat /rust-target)" \
    && cp "target/$(cat /rust-target)/release/kube-gpu-metrics" "target/$(cat /rust-target)/release/kube-gpu-metrics-agent" /

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kube-gpu-metrics /kube-gpu-metrics-agent /usr/local/bin/
USER 65532:65532
EXPOSE 9402 6443 9443
ENTRYPOINT ["kube-gpu-metrics"]
