package server

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/xds"
)

// ReplicaWindow is how recent an audit record on a replica's chain must be
// for the replica to be listed as seen.
const ReplicaWindow = time.Hour

// replicaScanPages bounds the audit pages (of 1000 records, newest first)
// read to find the replicas seen, so a status call stays cheap on a busy log.
const replicaScanPages = 5

var _ gateway.StatusSource = (*Server)(nil)

// runtimeStreams counts the runtime streams open on this replica:
// invalidation subscriptions and agent control streams.
type runtimeStreams struct{ open atomic.Int64 }

// runtimeMethods are the stream methods a runtime (SDK, aa-runtime) holds
// open while it is connected.
var runtimeMethods = map[string]bool{
	v1.InvalidationService_Subscribe_FullMethodName:       true,
	v1.AgentLifecycleService_ControlStream_FullMethodName: true,
}

// interceptor counts a runtime stream while its handler runs.
func (r *runtimeStreams) interceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if !runtimeMethods[info.FullMethod] {
			return h(srv, ss)
		}
		r.open.Add(1)
		defer r.open.Add(-1)
		return h(srv, ss)
	}
}

// ReplicaStatus reports this replica for AdminService.GetStatus. Replicas
// lists this replica and every other one with an audit record in the last
// ReplicaWindow (each replica writes its own audit chain, named by its
// replica id); an idle replica that made no decision in that window is not
// listed. A store that does not answer makes the replica unhealthy, not
// the call fail.
func (s *Server) ReplicaStatus(ctx context.Context) (gateway.ReplicaStatus, error) {
	st := gateway.ReplicaStatus{
		Version:    Version,
		Replica:    s.cfg.ReplicaName(),
		Store:      redactStore(s.cfg.Store),
		Counters:   redactStore(s.cfg.Counters),
		Durability: s.durability(),
		StartedAt:  s.started,
		Runtimes:   int(s.runtimes.open.Load()),
		EnvoyNodes: connectedEnvoys(s.xds),
		TokenKeys:  s.issuer.KeyIDs(),
	}
	if s.checkpoints != nil {
		st.CheckpointKey = s.checkpoints.KeyID()
	}
	snap := s.core.Snapshot()
	if snap != nil {
		st.PolicyVersion = snap.Version()
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	storeErr := s.store.Ping(pctx)
	st.Healthy = snap != nil && storeErr == nil
	st.Replicas = []string{st.Replica}
	if storeErr == nil {
		seen, err := replicasSeen(ctx, s.store, time.Now().Add(-ReplicaWindow))
		if err != nil {
			s.log.WarnContext(ctx, "status: replicas seen unknown", "err", err)
		}
		st.Replicas = mergeReplicas(st.Replica, seen)
	}
	return st, nil
}

// replicasSeen lists the chains of the newest audit records since since.
func replicasSeen(ctx context.Context, log storage.AuditLog, since time.Time) ([]string, error) {
	seen := map[string]bool{}
	q := storage.AuditQuery{Since: since, Limit: 1000}
	for range replicaScanPages {
		page, err := log.QueryAudit(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("query audit log: %w", err)
		}
		for _, r := range page.Records {
			seen[r.Chain] = true
		}
		if page.NextCursor == "" {
			break
		}
		q.Cursor = page.NextCursor
	}
	out := make([]string, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	return out, nil
}

// mergeReplicas returns self first, then the other replicas sorted.
func mergeReplicas(self string, seen []string) []string {
	others := slices.DeleteFunc(slices.Clone(seen), func(c string) bool { return c == self || c == "" })
	slices.Sort(others)
	return append([]string{self}, slices.Compact(others)...)
}

// connectedEnvoys counts the Envoy nodes with an open ADS stream.
func connectedEnvoys(x *xds.Server) int {
	if x == nil {
		return 0
	}
	n := 0
	for _, node := range x.Status() {
		if node.Connected && node.Flavour == xds.FlavourEnvoy {
			n++
		}
	}
	return n
}

// secretParams are URL query parameters whose values are credentials.
var secretParams = []string{"password", "pass", "secret", "token", "sslpassword"}

// redactStore hides credentials in a store or counters URL: the password
// of the user info and credential query parameters.
func redactStore(s string) string {
	if s == "" || !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		// Unparsable: show the scheme only rather than risk a secret.
		scheme, _, _ := strings.Cut(s, "://")
		return scheme + "://(unparsable URL hidden)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if slices.Contains(secretParams, strings.ToLower(k)) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// registerAdminREST serves GET /v1/status.
func (s *Server) registerAdminREST(ctx context.Context, gw *runtime.ServeMux) error {
	if err := v1.RegisterAdminServiceHandlerServer(ctx, gw, gateway.NewAdminService(s).WithKeys(s.store, s.core).WithTokenKeys(s)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	return nil
}
