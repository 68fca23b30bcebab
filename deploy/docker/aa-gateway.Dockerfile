# syntax=docker/dockerfile:1
# aa-gateway: one gateway replica (gRPC :50051, REST/health/metrics :7700).
#
# Build from the repository root (the build context is the whole module):
#   docker build -f deploy/docker/aa-gateway.Dockerfile --build-arg VERSION=$(git describe --always --dirty) -t agent-assembly/aa-gateway .
# deploy/deploy_test.go checks this file: the stages, a non-root final USER,
# and that the same go build compiles (CGO_ENABLED=0, -trimpath) and stamps VERSION.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/agent-assembly/agent-assembly/gateway/server.Version=${VERSION}" -o /out/aa-gateway ./cmd/aa-gateway
# The state directory (SQLite store, secrets key) must belong to the runtime user.
RUN mkdir -p /out/state && chmod 0700 /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aa-gateway /usr/local/bin/aa-gateway
COPY --from=build /src/examples/policies /etc/agent-assembly/policies
COPY --from=build --chown=65532:65532 /out/state /var/lib/agent-assembly
WORKDIR /var/lib/agent-assembly
# Paths inside the image. The listeners keep the binary's loopback defaults:
# a deployment that publishes them sets AA_GRPC_ADDR/AA_API_ADDR to 0.0.0.0:…
# and AA_ALLOW_REMOTE=true explicitly (see docs/deployment.md).
ENV AA_POLICY=/etc/agent-assembly/policies \
    AA_STORE=sqlite:/var/lib/agent-assembly/aa.db \
    AA_SECRETS_KEY_FILE=/var/lib/agent-assembly/secrets.key \
    AA_LOG_FORMAT=json
USER 65532:65532
EXPOSE 50051 7700
ENTRYPOINT ["/usr/local/bin/aa-gateway"]
