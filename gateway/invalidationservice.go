package gateway

import (
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// InvalidationService implements agentassembly.v1.InvalidationService over an
// Invalidations hub: a stream of numbered events that a subscriber resumes
// from the last sequence number it saw, on any replica.
type InvalidationService struct {
	v1.UnimplementedInvalidationServiceServer
	events *Invalidations
	// auth limits a subscription to the agents its caller proves (see
	// WithAgentAuth).
	auth *AgentAuth
}

var _ v1.InvalidationServiceServer = (*InvalidationService)(nil)

// NewInvalidationService returns the service for events.
func NewInvalidationService(events *Invalidations) *InvalidationService {
	return &InvalidationService{events: events}
}

// WithAgentAuth makes Subscribe require agent credentials
// (x-aa-credential-token metadata, one value per agent, or an agent client
// certificate) and limits the subscription to those agents' events (and
// events for every agent, such as policy changes). It returns s.
func (s *InvalidationService) WithAgentAuth(a *AgentAuth) *InvalidationService {
	s.auth = a
	return s
}

// maxSubscribeAgents bounds the agent filter of one subscription.
const maxSubscribeAgents = 10000

// Subscribe implements InvalidationService.Subscribe. last_seq_seen 0 starts
// from now; otherwise every event after it is sent, in order, and a
// TYPE_RESYNC comes first when some were already trimmed from the log (or the
// position is ahead of the log, e.g. after the log was reset).
// SubscribedSeqHeader is the response header Subscribe sends once the
// subscription is in place: the sequence number events follow from.
const SubscribedSeqHeader = "aa-subscribed-seq"

func (s *InvalidationService) Subscribe(req *v1.SubscribeRequest, stream grpc.ServerStreamingServer[v1.InvalidationEvent]) error {
	ctx := stream.Context()
	if err := checkID("subscriber", req.GetSubscriber(), false); err != nil {
		return requestStatus(err)
	}
	if req.GetLastSeqSeen() < 0 {
		return requestStatus(badField("last_seq_seen", "must not be negative"))
	}
	if len(req.GetAgents()) > maxSubscribeAgents {
		return requestStatus(badField("agents", "has %d entries, over the limit of %d", len(req.GetAgents()), maxSubscribeAgents))
	}
	var filter map[action.AgentID]bool
	for i, a := range req.GetAgents() {
		id, err := agentIDFrom("agents["+strconv.Itoa(i)+"]", a)
		if err != nil {
			return requestStatus(err)
		}
		if filter == nil {
			filter = map[action.AgentID]bool{}
		}
		filter[id] = true
	}
	proven, err := s.auth.AuthenticateAll(ctx, "Subscribe")
	if err != nil {
		return err
	}
	if proven != nil {
		for id := range filter {
			if !proven[id] {
				return s.auth.RefuseMismatch(ctx, "Subscribe", id)
			}
		}
		if filter == nil {
			filter = proven
		}
	}
	select {
	case <-s.events.Ready():
	case <-ctx.Done():
		return nil
	}
	after := req.GetLastSeqSeen()
	head := s.events.Head()
	if after > head {
		// Maybe only this replica is behind (the subscriber saw the event
		// elsewhere, or before this replica read it): catch up first.
		head = s.events.WaitHead(ctx, after, 2*time.Second)
	}
	switch {
	case after == 0:
		after = head
	case after > head:
		// The subscriber is ahead of this log: it cannot know what it missed.
		if err := stream.Send(&v1.InvalidationEvent{Seq: head, Type: v1.InvalidationEvent_TYPE_RESYNC, Time: timestamppb.Now()}); err != nil {
			return err
		}
		after = head
	}
	// The subscription is in place: say from where, so the subscriber knows
	// it is live (and where to resume) before the first event arrives.
	if err := stream.SendHeader(metadata.Pairs(SubscribedSeqHeader, strconv.FormatInt(after, 10))); err != nil {
		return err
	}
	for {
		evs, err := s.events.Next(ctx, after, 256)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return storeStatus("read invalidations", err)
		}
		for _, ev := range evs {
			after = ev.Seq
			if filter != nil && ev.Agent != (action.AgentID{}) && !filter[ev.Agent] {
				continue
			}
			if err := stream.Send(InvalidationToProto(ev)); err != nil {
				return err
			}
		}
	}
}

// InvalidationToProto renders an event on the wire.
func InvalidationToProto(ev *storage.InvalidationEvent) *v1.InvalidationEvent {
	out := &v1.InvalidationEvent{Seq: ev.Seq, Type: invalidationTypeTo(ev.Type), PolicyVersion: ev.PolicyVersion,
		ApprovalId: ev.ApprovalID, Reason: ev.Reason, Time: ts(ev.Time)}
	if ev.Agent != (action.AgentID{}) {
		out.Agent = agentIDTo(ev.Agent)
	}
	return out
}

func invalidationTypeTo(t storage.InvalidationType) v1.InvalidationEvent_Type {
	switch t {
	case storage.InvalidatePolicy:
		return v1.InvalidationEvent_TYPE_POLICY_CHANGED
	case storage.InvalidateApproval:
		return v1.InvalidationEvent_TYPE_APPROVAL_RESOLVED
	case storage.InvalidateSuspended:
		return v1.InvalidationEvent_TYPE_AGENT_SUSPENDED
	case storage.InvalidateResumed:
		return v1.InvalidationEvent_TYPE_AGENT_RESUMED
	case storage.InvalidateKilled:
		return v1.InvalidationEvent_TYPE_AGENT_KILLED
	case storage.InvalidateRevoked:
		return v1.InvalidationEvent_TYPE_CREDENTIAL_REVOKED
	case storage.InvalidateAgentMode:
		return v1.InvalidationEvent_TYPE_AGENT_MODE_CHANGED
	case storage.InvalidateRegistered:
		return v1.InvalidationEvent_TYPE_AGENT_REGISTERED
	case InvalidateResync:
		return v1.InvalidationEvent_TYPE_RESYNC
	}
	return v1.InvalidationEvent_TYPE_UNSPECIFIED
}
