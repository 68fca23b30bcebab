package auth

import (
	"testing"

	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// BenchmarkAuthorizeAgentMethod is the cost the operator check adds to
// every agent call (CheckAction): a table lookup and a pass.
func BenchmarkAuthorizeAgentMethod(b *testing.B) {
	a, err := New(Options{Keys: memory.New(memory.Options{})})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Method: "/agentassembly.v1.PolicyService/CheckAction", Surface: "grpc", Source: "127.0.0.1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authorize(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthorizeAPIKey is an operator call with a valid key against the
// in-memory store (a SQLite or PostgreSQL store adds its read).
func BenchmarkAuthorizeAPIKey(b *testing.B) {
	st := memory.New(memory.Options{})
	a, err := New(Options{Keys: st})
	if err != nil {
		b.Fatal(err)
	}
	k := addKey(b, st, "bench", RoleAdmin)
	req := Request{Method: "/agentassembly.v1.AdminService/GetStatus", Surface: "grpc", Authorization: "Bearer " + k.String(), Source: "127.0.0.1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authorize(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}
