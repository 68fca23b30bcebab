// Package xds is the gateway's xDS control plane: it turns the compiled policy
// into per-agent Envoy (and gRPC xDS client) resources and serves them over
// ADS, tracking each node's ACKs and NACKs.
package xds
