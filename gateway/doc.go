// Package gateway is the decision core: it turns a CheckActionRequest into an
// action, evaluates the active policy snapshot, writes the audit record and
// answers, and it implements the agentassembly.v1 gRPC services on top of that.
//
// Transport adapters (the gRPC/REST server in gateway/server, Envoy ext_authz
// in extauthz) call into Core; they never reach into storage themselves.
package gateway
