package gateway

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/alerts"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage"
)

// AlertStore is what AlertService needs from the store.
type AlertStore interface {
	QueryAlerts(ctx context.Context, q storage.AlertQuery) (storage.AlertPage, error)
	PutSilence(ctx context.Context, s *storage.Silence) error
	ListSilences(ctx context.Context, activeAt time.Time) ([]*storage.Silence, error)
	ExpireSilence(ctx context.Context, id string, at time.Time) (*storage.Silence, error)
}

// AlertFeed is the live side of the alerts: alerts.Engine implements it.
type AlertFeed interface {
	Watch(ctx context.Context, f alerts.Filter) (*alerts.Watch, error)
	SilencesChanged()
}

// Silence bounds.
const (
	// MaxSilence is the longest a silence may last.
	MaxSilence     = 90 * 24 * time.Hour
	maxSilenceText = 1024
)

// AlertService implements agentassembly.v1.AlertService.
type AlertService struct {
	v1.UnimplementedAlertServiceServer
	store AlertStore
	feed  AlertFeed
	core  *Core // audits silence changes; may be nil
	now   func() time.Time
}

var _ v1.AlertServiceServer = (*AlertService)(nil)

// NewAlertService returns the service over store and feed. core, when not
// nil, audits silences created and deleted.
func NewAlertService(store AlertStore, feed AlertFeed, core *Core) *AlertService {
	return &AlertService{store: store, feed: feed, core: core, now: time.Now}
}

func alertFilter(kind, severity string) (string, storage.AlertSeverity, error) {
	if kind != "" && !alerts.ValidKind(kind) {
		return "", "", badField("kind", "unknown alert kind %q: want one of %s", kind, strings.Join(alerts.Kinds, ", "))
	}
	sev, err := alerts.ParseSeverity(severity)
	if err != nil {
		return "", "", badField("severity", "%q is not a severity: want info, warning or critical", severity)
	}
	return kind, sev, nil
}

// ListAlerts implements AlertService.ListAlerts.
func (s *AlertService) ListAlerts(ctx context.Context, req *v1.ListAlertsRequest) (*v1.ListAlertsResponse, error) {
	kind, sev, err := alertFilter(req.GetKind(), req.GetSeverity())
	if err != nil {
		return nil, requestStatus(err)
	}
	if req.GetPageSize() < 0 || req.GetPageSize() > storage.MaxAuditLimit {
		return nil, requestStatus(badField("page_size", "must be between 0 and %d, not %d", storage.MaxAuditLimit, req.GetPageSize()))
	}
	q := storage.AlertQuery{Kind: kind, Severities: storage.AtLeast(sev), Org: req.GetOrgId(), Team: req.GetTeamId(),
		Agent: req.GetAgentId(), Cursor: req.GetCursor(), Limit: int(req.GetPageSize())}
	for _, t := range []struct {
		name string
		ts   *timestamppb.Timestamp
		dst  *time.Time
	}{{"since", req.GetSince(), &q.Since}, {"until", req.GetUntil(), &q.Until}} {
		if t.ts == nil {
			continue
		}
		if err := t.ts.CheckValid(); err != nil {
			return nil, requestStatus(badField(t.name, "%v", err))
		}
		*t.dst = t.ts.AsTime()
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return nil, requestStatus(badField("until", "must be after since"))
	}
	p, err := s.store.QueryAlerts(ctx, q)
	if err != nil {
		if errors.Is(err, storage.ErrInvalid) {
			return nil, requestStatus(badField("cursor", "%v", err))
		}
		return nil, storeStatus("list alerts", err)
	}
	resp := &v1.ListAlertsResponse{NextCursor: p.NextCursor}
	for _, a := range p.Alerts {
		resp.Alerts = append(resp.Alerts, AlertToProto(a))
	}
	return resp, nil
}

// WatchAlerts implements AlertService.WatchAlerts.
func (s *AlertService) WatchAlerts(req *v1.WatchAlertsRequest, stream grpc.ServerStreamingServer[v1.Alert]) error {
	kind, sev, err := alertFilter(req.GetKind(), req.GetSeverity())
	if err != nil {
		return requestStatus(err)
	}
	if s.feed == nil {
		return status.Error(codes.FailedPrecondition, "alerts are not enabled on this gateway")
	}
	ctx := stream.Context()
	w, err := s.feed.Watch(ctx, alerts.Filter{Kind: kind, MinSeverity: sev, Org: req.GetOrgId(), Team: req.GetTeamId(), Agent: req.GetAgentId()})
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	// Headers go out now, so the client knows the watch is in place.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for a := range w.C {
		if err := stream.Send(AlertToProto(a)); err != nil {
			return err
		}
	}
	if err := w.Err(); err != nil {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Error(codes.Unavailable, "the gateway is shutting down; watch another replica")
}

// ListSilences implements AlertService.ListSilences.
func (s *AlertService) ListSilences(ctx context.Context, req *v1.ListSilencesRequest) (*v1.ListSilencesResponse, error) {
	now := s.now()
	at := now
	if req.GetIncludeExpired() {
		at = time.Time{}
	}
	ss, err := s.store.ListSilences(ctx, at)
	if err != nil {
		return nil, storeStatus("list silences", err)
	}
	resp := &v1.ListSilencesResponse{}
	for _, si := range ss {
		resp.Silences = append(resp.Silences, SilenceToProto(si, now))
	}
	return resp, nil
}

// CreateSilence implements AlertService.CreateSilence.
func (s *AlertService) CreateSilence(ctx context.Context, req *v1.CreateSilenceRequest) (*v1.Silence, error) {
	kind, sev, err := alertFilter(req.GetKind(), req.GetSeverity())
	if err != nil {
		return nil, requestStatus(err)
	}
	if kind == "" && sev == "" && req.GetAgentPrefix() == "" {
		return nil, requestStatus(badField("kind", "a silence needs at least one matcher (kind, severity or agent_prefix); it would silence every alert"))
	}
	for _, f := range []struct{ name, v string }{{"agent_prefix", req.GetAgentPrefix()}, {"comment", req.GetComment()}} {
		if len(f.v) > maxSilenceText || !utf8.ValidString(f.v) || strings.ContainsRune(f.v, 0) {
			return nil, requestStatus(badField(f.name, "must be valid UTF-8 without NUL, at most %d bytes", maxSilenceText))
		}
	}
	now := s.now()
	var ends time.Time
	switch {
	case req.GetEndsAt() != nil && req.GetDuration() != nil:
		return nil, requestStatus(badField("duration", "give ends_at or duration, not both"))
	case req.GetEndsAt() != nil:
		if err := req.GetEndsAt().CheckValid(); err != nil {
			return nil, requestStatus(badField("ends_at", "%v", err))
		}
		ends = req.GetEndsAt().AsTime()
	case req.GetDuration() != nil:
		if err := req.GetDuration().CheckValid(); err != nil {
			return nil, requestStatus(badField("duration", "%v", err))
		}
		d := req.GetDuration().AsDuration()
		if d <= 0 || d > MaxSilence {
			return nil, requestStatus(badField("duration", "must be positive and at most %s, not %s", MaxSilence, d))
		}
		ends = now.Add(d)
	default:
		return nil, requestStatus(badField("duration", "is required (or ends_at): a silence must end"))
	}
	if !ends.After(now) || ends.Sub(now) > MaxSilence {
		return nil, requestStatus(badField("ends_at", "must be in the future and at most %s away", MaxSilence))
	}
	by := auth.Principal(ctx)
	if by == "" {
		by = "anonymous"
	}
	si := &storage.Silence{ID: uuid.NewString(), Kind: kind, Severity: sev, AgentPrefix: req.GetAgentPrefix(),
		StartsAt: now, EndsAt: ends, Comment: req.GetComment(), CreatedBy: by, CreatedAt: now}
	if err := s.store.PutSilence(ctx, si); err != nil {
		return nil, storeStatus("create silence", err)
	}
	if s.feed != nil {
		s.feed.SilencesChanged()
	}
	s.audit(ctx, "alert.silence.create", si)
	return SilenceToProto(si, now), nil
}

// DeleteSilence implements AlertService.DeleteSilence: the silence ends now.
func (s *AlertService) DeleteSilence(ctx context.Context, req *v1.DeleteSilenceRequest) (*v1.Silence, error) {
	if _, err := uuid.Parse(req.GetId()); err != nil {
		return nil, requestStatus(badField("id", "%q is not a silence id (a UUID from aasm alerts silence list)", req.GetId()))
	}
	now := s.now()
	si, err := s.store.ExpireSilence(ctx, req.GetId(), now)
	if err != nil {
		return nil, storeStatus("delete silence", err)
	}
	if s.feed != nil {
		s.feed.SilencesChanged()
	}
	s.audit(ctx, "alert.silence.delete", si)
	return SilenceToProto(si, now), nil
}

func (s *AlertService) audit(ctx context.Context, rule string, si *storage.Silence) {
	if s.core == nil {
		return
	}
	by := auth.Principal(ctx)
	_ = s.core.AuditGovernance(ctx, action.AgentID{}, rule, rule+" "+si.ID+" by "+si.CreatedBy,
		details(map[string]any{"silence_id": si.ID, "kind": si.Kind, "severity": string(si.Severity), "agent_prefix": si.AgentPrefix,
			"ends_at": si.EndsAt.UTC().Format(time.RFC3339), "comment": si.Comment, "by": by}))
}

// AlertToProto renders a stored alert on the wire.
func AlertToProto(a *storage.Alert) *v1.Alert {
	out := &v1.Alert{Id: a.ID, Time: timestamppb.New(a.Time), Kind: a.Kind, Severity: string(a.Severity), Summary: a.Summary,
		DetailsJson: string(a.Details), Source: a.Source, Silenced: a.Silenced(), SilenceId: a.SilenceID}
	if !a.Agent.IsZero() {
		out.Agent = &v1.AgentId{OrgId: a.Agent.Org, TeamId: a.Agent.Team, AgentId: a.Agent.Agent}
	}
	return out
}

// SilenceToProto renders a stored silence as seen at now.
func SilenceToProto(si *storage.Silence, now time.Time) *v1.Silence {
	return &v1.Silence{Id: si.ID, Kind: si.Kind, Severity: string(si.Severity), AgentPrefix: si.AgentPrefix,
		StartsAt: timestamppb.New(si.StartsAt), EndsAt: timestamppb.New(si.EndsAt), Comment: si.Comment,
		CreatedBy: si.CreatedBy, CreatedAt: timestamppb.New(si.CreatedAt), Active: si.ActiveAt(now)}
}
