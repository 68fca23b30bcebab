// Package runtime is the per-host agent runtime: it serves SDK frames on
// per-agent Unix sockets, re-scans and checks every action with the gateway,
// caches decisions until the gateway invalidates them, and keeps audit events
// in a durable buffer until the gateway acknowledges them.
package runtime
