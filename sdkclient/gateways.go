package sdkclient

import (
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// gatewayServiceConfig spreads calls over the replicas and retries a call
// that failed with UNAVAILABLE (a replica died or restarted) on another one,
// up to three attempts with a short backoff. A retried check may be decided
// (and audited) twice when the first replica answered but the answer was
// lost; the audit log then shows both.
const gatewayServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "agentassembly.v1.PolicyService"},
      {"service": "agentassembly.v1.AuditService"},
      {"service": "agentassembly.v1.AgentLifecycleService"}
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

// gatewayTarget turns Options.Gateway (one address, or several separated by
// commas) into a gRPC target and the dial options that go with it.
func gatewayTarget(addrs string) (string, []grpc.DialOption) {
	opts := []grpc.DialOption{grpc.WithDefaultServiceConfig(gatewayServiceConfig)}
	var list []resolver.Address
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			list = append(list, resolver.Address{Addr: a})
		}
	}
	if len(list) <= 1 {
		return strings.TrimSpace(addrs), opts
	}
	r := manual.NewBuilderWithScheme("aa-gateways")
	r.InitialState(resolver.State{Addresses: list})
	return r.Scheme() + ":///gateways", append(opts, grpc.WithResolvers(r))
}
