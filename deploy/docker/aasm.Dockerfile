# syntax=docker/dockerfile:1
# aasm: the operator CLI, for jobs and debugging pods (kubectl run … -- aasm audit verify).
#
# Build from the repository root:
#   docker build -f deploy/docker/aasm.Dockerfile --build-arg VERSION=$(git describe --always --dirty) -t agent-assembly/aasm .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/agent-assembly/agent-assembly/gateway/server.Version=${VERSION}" -o /out/aasm ./cmd/aasm

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aasm /usr/local/bin/aasm
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aasm"]
CMD ["--help"]
