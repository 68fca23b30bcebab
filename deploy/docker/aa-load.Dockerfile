# syntax=docker/dockerfile:1
# aa-load: closed/open-loop load generator for CheckAction and ext_authz Check.
#
# Build from the repository root:
#   docker build -f deploy/docker/aa-load.Dockerfile -t agent-assembly/aa-load .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/aa-load ./cmd/aa-load

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aa-load /usr/local/bin/aa-load
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aa-load"]
