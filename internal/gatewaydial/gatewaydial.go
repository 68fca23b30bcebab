// Package gatewaydial turns a gateway address list ("host:port", or several
// separated by commas) into a gRPC target whose calls are spread over the
// replicas and retried on another replica when one dies. sdkclient and
// aa-runtime dial the gateway with it.
package gatewaydial

import (
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// ServiceConfig spreads calls over the replicas (round_robin) and retries a
// call that failed with UNAVAILABLE (its replica died or restarted before
// answering) on another one, up to three attempts with a short backoff.
//
// gRPC retries a call only until it is committed: a unary call until its
// answer arrives, a stream until its first response header. A retried check
// may be decided (and audited) twice when the first replica decided it but
// died before answering; the audit log then shows both. Streams that were
// already answering (the invalidation and control streams) end with
// UNAVAILABLE when their replica dies; their callers subscribe again, and
// round_robin sends the new stream to a live replica.
//
// ApprovalService is retried only for its read methods (WaitApproval,
// GetApproval): a Decide is the operator's to repeat.
const ServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "agentassembly.v1.PolicyService"},
      {"service": "agentassembly.v1.AuditService"},
      {"service": "agentassembly.v1.AgentLifecycleService"},
      {"service": "agentassembly.v1.InvalidationService"},
      {"service": "agentassembly.v1.ApprovalService", "method": "WaitApproval"},
      {"service": "agentassembly.v1.ApprovalService", "method": "GetApproval"}
    ],
    "retryPolicy": {
      "maxAttempts": 3,
      "initialBackoff": "0.02s",
      "maxBackoff": "0.2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Scheme is the resolver scheme of a target naming several replicas.
const Scheme = "aa-gateways"

// Split returns the addresses of a comma-separated list, trimmed, in order.
// It fails when the list names no address or an entry is empty, and, for a
// list of several, when an entry is not host:port.
func Split(addrs string) ([]string, error) {
	if strings.TrimSpace(addrs) == "" {
		return nil, fmt.Errorf("parse gateway addresses: the list is empty (want host:port, or several separated by commas)")
	}
	parts := strings.Split(addrs, ",")
	out := make([]string, 0, len(parts))
	for i, a := range parts {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("parse gateway addresses %q: entry %d is empty", addrs, i+1)
		}
		out = append(out, a)
	}
	if len(out) > 1 {
		// Several replicas are dialled over TCP by host:port; a target
		// form such as unix:///path or dns:/// works only alone.
		for _, a := range out {
			if _, _, err := net.SplitHostPort(a); err != nil || strings.Contains(a, "/") {
				return nil, fmt.Errorf("parse gateway addresses %q: %q is not host:port (a list takes host:port entries only)", addrs, a)
			}
		}
	}
	return out, nil
}

// Target turns addrs (one address, or several separated by commas) into a
// gRPC target and the dial options that go with it: ServiceConfig as the
// default service config and, for several addresses, a resolver that
// hands gRPC the whole list. One address is used as given, so the
// "dns:///", "unix://" and other target forms keep working.
func Target(addrs string) (string, []grpc.DialOption, error) {
	list, err := Split(addrs)
	if err != nil {
		return "", nil, err
	}
	opts := []grpc.DialOption{grpc.WithDefaultServiceConfig(ServiceConfig)}
	if len(list) == 1 {
		return list[0], opts, nil
	}
	rs := make([]resolver.Address, len(list))
	for i, a := range list {
		rs[i] = resolver.Address{Addr: a}
	}
	r := manual.NewBuilderWithScheme(Scheme)
	r.InitialState(resolver.State{Addresses: rs})
	return r.Scheme() + ":///gateways", append(opts, grpc.WithResolvers(r)), nil
}
