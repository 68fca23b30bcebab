// Package deploy holds the deployment artefacts (Dockerfiles, compose,
// Kubernetes manifests, systemd units, the Envoy sidecar bootstrap) and the
// tests that check them against the code, so they cannot drift.
package deploy
