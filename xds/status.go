package xds

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// StatusService serves agentassembly.v1.XdsService from a Server.
type StatusService struct {
	v1.UnimplementedXdsServiceServer
	s *Server
}

// NewStatusService returns the XdsService of s.
func NewStatusService(s *Server) *StatusService { return &StatusService{s: s} }

var _ v1.XdsServiceServer = (*StatusService)(nil)

// GetXdsStatus lists the nodes, or those of one agent.
func (st *StatusService) GetXdsStatus(_ context.Context, req *v1.GetXdsStatusRequest) (*v1.XdsStatus, error) {
	out := &v1.XdsStatus{}
	if snap := st.s.src.Snapshot(); snap != nil {
		out.PolicyVersion = snap.Version()
	}
	for _, n := range st.s.Status() {
		if req.GetNodeId() != "" && n.Node != req.GetNodeId() {
			continue
		}
		ns := &v1.XdsNodeStatus{
			NodeId: n.Node, Flavour: string(n.Flavour), Version: n.Version, UpdatedAt: ts(n.UpdatedAt),
			Connected: n.Connected, LastSeen: ts(n.LastSeen), Skipped: n.Skipped,
		}
		for _, t := range n.Types {
			ns.Types = append(ns.Types, &v1.XdsTypeStatus{
				Type: short(t.TypeURL), SentVersion: t.SentVersion, SentAt: ts(t.SentAt),
				AckVersion: t.AckVersion, AckAt: ts(t.AckAt),
				NackVersion: t.NackVersion, NackAt: ts(t.NackAt), NackError: t.NackError,
			})
		}
		out.Nodes = append(out.Nodes, ns)
	}
	return out, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
