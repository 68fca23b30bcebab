# syntax=docker/dockerfile:1
# aa-runtime: the per-host runtime (Unix sockets for the SDK, decision cache,
# durable event buffer; "exec" starts an agent in its own cgroup with eBPF).
#
# Build from the repository root:
#   docker build -f deploy/docker/aa-runtime.Dockerfile --build-arg VERSION=$(git describe --always --dirty) -t agent-assembly/aa-runtime .
# The image runs "serve" as a non-root user: enough to serve agents of the same
# uid over a shared socket directory. Kernel enforcement ("exec --ebpf") needs
# root with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN and a
# writable cgroup v2 mount; on VM hosts use deploy/systemd/ instead.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/aa-runtime ./cmd/aa-runtime
RUN mkdir -p /out/state /out/run && chmod 0700 /out/state && chmod 0755 /out/run

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aa-runtime /usr/local/bin/aa-runtime
COPY --from=build --chown=65532:65532 /out/state /var/lib/agent-assembly/runtime
COPY --from=build --chown=65532:65532 /out/run /run/agent-assembly
ENV AA_RUNTIME_BUFFER=/var/lib/agent-assembly/runtime/events.db \
    AA_RUNTIME_SOCKET_DIR=/run/agent-assembly
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aa-runtime"]
CMD ["serve", "-help"]
