package main

import (
	"context"
	"google.golang.org/grpc"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// clients are the gateway's services on one connection.
type clients struct {
	policy    v1.PolicyServiceClient
	audit     v1.AuditServiceClient
	approvals v1.ApprovalServiceClient
	secrets   v1.SecretsServiceClient
	admin     v1.AdminServiceClient
}

// withConn dials the gateway and runs fn with the connection and a context
// bounded by --timeout (0 means no bound).
func (g *globals) withConn(ctx context.Context, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	if g.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	return fn(ctx, conn)
}

// call dials the gateway and runs fn with the clients and a context bounded
// by --timeout (0 means no bound).
func (g *globals) call(ctx context.Context, fn func(ctx context.Context, c clients) error) error {
	return g.withConn(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		return fn(ctx, clients{policy: v1.NewPolicyServiceClient(conn), audit: v1.NewAuditServiceClient(conn), approvals: v1.NewApprovalServiceClient(conn), secrets: v1.NewSecretsServiceClient(conn), admin: v1.NewAdminServiceClient(conn)})
	})
}
