package gateway

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// ReplicaStatus is what one gateway replica reports about itself.
type ReplicaStatus struct {
	// Version is the gateway build version.
	Version string
	// Replica is this replica's name, also the id of its audit chain.
	Replica string
	// Healthy is true when a policy is serving and the store answers.
	Healthy bool
	// Store and Counters describe the backends with credentials redacted;
	// Counters is empty when the counters live in the store.
	Store, Counters string
	// Durability is the audit durability level (sync or os).
	Durability string
	// PolicyVersion is the active policy version.
	PolicyVersion string
	// StartedAt is when the replica started.
	StartedAt time.Time
	// Replicas lists the replicas known to be alive (see the status
	// source for how they are found), this one included.
	Replicas []string
	// Runtimes counts the runtime streams (invalidation subscriptions and
	// agent control streams) open on this replica.
	Runtimes int
	// EnvoyNodes counts the Envoy sidecars with an open xDS stream to this
	// replica.
	EnvoyNodes int
	// TokenKeys names the keys agent tokens are verified with here, the
	// signing key first; CheckpointKey the audit checkpoint key.
	TokenKeys     []string
	CheckpointKey string
}

// StatusSource reports the status of the replica it belongs to.
type StatusSource interface {
	// ReplicaStatus gathers the replica's status. It fails only when the
	// status cannot be gathered at all; an unhealthy replica is reported
	// with Healthy false.
	ReplicaStatus(ctx context.Context) (ReplicaStatus, error)
}

// AdminService serves agentassembly.v1.AdminService: GetStatus, and the
// API-key calls once WithKeys gives it a key store (adminkeys.go).
type AdminService struct {
	v1.UnimplementedAdminServiceServer
	src       StatusSource
	keys      storage.APIKeys
	audit     governanceAuditor
	tokenKeys TokenKeyRotator // nil until WithTokenKeys (tokenkeys.go)
}

var _ v1.AdminServiceServer = (*AdminService)(nil)

// NewAdminService returns the AdminService reporting src.
func NewAdminService(src StatusSource) *AdminService { return &AdminService{src: src} }

// GetStatus implements AdminService.GetStatus.
func (a *AdminService) GetStatus(ctx context.Context, _ *v1.GetStatusRequest) (*v1.GatewayStatus, error) {
	st, err := a.src.ReplicaStatus(ctx)
	if err != nil {
		return nil, storeStatus("gateway status", err)
	}
	return StatusToProto(st), nil
}

// StatusToProto converts a ReplicaStatus to its wire form.
func StatusToProto(st ReplicaStatus) *v1.GatewayStatus {
	out := &v1.GatewayStatus{
		Version: st.Version, ReplicaId: st.Replica, Healthy: st.Healthy,
		Store: st.Store, Counters: st.Counters, PolicyVersion: st.PolicyVersion,
		Replicas: st.Replicas, ConnectedRuntimes: int32(st.Runtimes),
		ConnectedEnvoyNodes: int32(st.EnvoyNodes), AuditDurability: st.Durability,
		TokenKeyIds: st.TokenKeys, AuditCheckpointKeyId: st.CheckpointKey,
	}
	if !st.StartedAt.IsZero() {
		out.StartedAt = timestamppb.New(st.StartedAt)
	}
	return out
}
