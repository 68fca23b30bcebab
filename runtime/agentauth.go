package runtime

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// tokenHeader is the gRPC metadata key of an agent credential token
// (gateway.CredentialTokenHeader) on calls whose request has no
// credential_token field: ReportEvents, Subscribe and WaitApproval.
const tokenHeader = "x-aa-credential-token"

// withToken adds agent a's credential token, when it has one, to ctx.
func withToken(ctx context.Context, a *agentState) context.Context {
	if t := a.token.Load(); t != nil && *t != "" {
		return metadata.AppendToOutgoingContext(ctx, tokenHeader, *t)
	}
	return ctx
}

// withTokens adds the credential token of every agent that has one to ctx,
// and returns the ids of those agents: the gateway accepts events and
// subscriptions only for agents whose credentials the call carries.
func (rt *Runtime) withTokens(ctx context.Context) (context.Context, []*v1.AgentId) {
	var kv []string
	var ids []*v1.AgentId
	for _, a := range rt.agents {
		if t := a.token.Load(); t != nil && *t != "" {
			kv = append(kv, tokenHeader, *t)
			ids = append(ids, a.pid)
		}
	}
	if len(kv) == 0 {
		return ctx, nil
	}
	return metadata.AppendToOutgoingContext(ctx, kv...), ids
}

// Token returns the current credential token of the agent id the runtime
// serves, or "" while it is not registered (or id is not one of its agents).
// The token changes when the runtime renews it; read it for every call.
func (rt *Runtime) Token(id action.AgentID) string {
	for _, a := range rt.agents {
		if a.ID == id {
			if t := a.token.Load(); t != nil {
				return *t
			}
		}
	}
	return ""
}
