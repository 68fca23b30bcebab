// Package alerts raises, stores, streams and delivers the events operators
// must act on: budget thresholds and exhaustion, policy violations, blocked
// credential leaks, suspended agents, xDS NACKs, eBPF drops and audit chain
// breaks.
//
// An Engine takes alerts from the gateway without blocking it, marks those a
// silence matches, stores each once across replicas (the alert id is derived
// from its source event, and only the replica whose insert stored it
// delivers it), announces it to every replica's watchers and posts it to
// webhook destinations, signed with HMAC-SHA256 and retried with exponential
// backoff and jitter.
package alerts
