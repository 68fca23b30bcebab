# syntax=docker/dockerfile:1
# agent: the example agent (examples/agent), governed through sdkclient. It
# finds the runtime socket in $AA_RUNTIME_SOCKET or the gateway in
# $AA_GATEWAY_ADDR, with its identity in $AA_AGENT_ID.
#
# Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t agent-assembly/example-agent .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/agent ./examples/agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/agent /usr/local/bin/agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agent"]
