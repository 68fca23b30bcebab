// Package server assembles a gateway replica: it opens the store, starts the
// audit writer and the policy reloader, and serves the gRPC services and the
// REST/health/metrics HTTP endpoints on listeners the caller owns.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/alerts"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/api/openapi"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/extauthz"
	"github.com/agent-assembly/agent-assembly/extauthz/codec"
	"github.com/agent-assembly/agent-assembly/extproc"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/backend"
	"github.com/agent-assembly/agent-assembly/storage/cache"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/tracing"
	"github.com/agent-assembly/agent-assembly/xds"
)

// Version is the build version, set with -ldflags "-X .../gateway/server.Version=...".
var Version = "dev"

// Server is one gateway replica.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    storage.Store
	cached   *cache.Store
	life     context.Context // ends when the server stops
	endLife  context.CancelFunc
	writer   *groupcommit.Writer
	core     *gateway.Core
	reloader *gateway.Reloader
	agents   *gateway.AgentService
	events   *gateway.Invalidations
	reg      *prometheus.Registry
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server
	started  time.Time
	xds      *xds.Server
	tracing  *tracing.Tracing
	// draining is closed when shutdown starts: long-lived streams (tail,
	// watch, control, invalidation, xDS) end so graceful stop can finish.
	draining chan struct{}
	runtimes runtimeStreams // open runtime streams, for GetStatus (status.go)
	alerts   *alerts.Engine // alert feed and webhook delivery (alerts.go)
	// checkpoints signs the audit chain's checkpoints, which checkpointer
	// appends (checkpoints.go).
	checkpoints  *storage.CheckpointSigner
	checkpointer *checkpointer
	// issuer signs and verifies agent credential tokens; its keys follow
	// the store (tokenkeys.go).
	issuer *identity.Issuer

	// agentAuth proves agents on the agent-facing surfaces (agentauth.go).
	agentAuth *gateway.AgentAuth
	// auth authorizes operator calls; routes maps REST routes to methods;
	// tls is the listeners' TLS configuration (nil: plaintext). See auth.go
	// and tls.go.
	auth   *auth.Authenticator
	routes auth.Routes
	tls    *tls.Config
}

// New opens the store and loads the policy. It fails if either is unusable:
// a gateway never starts without a valid policy and a working audit log.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = slog.New(tracing.LogHandler(log.Handler())) // records logged with a call's context carry its request_id
	s := &Server{cfg: cfg, log: log, reg: prometheus.NewRegistry(), started: time.Now(), draining: make(chan struct{})}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := ensureDataDir(cfg); err != nil {
		return nil, err
	}
	box, extraKeys, err := secretsBox(cfg)
	if err != nil {
		return nil, err
	}
	st, err := backend.Open(ctx, cfg.Store, cfg.Counters, backend.Options{
		Durability: storage.Durability(cfg.AuditDurability),
		Sealer:     box,
		Logger:     log,
	})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", redactURL(cfg.Store), err)
	}
	s.store = st
	if extraKeys > 0 && cfg.SecretsReseal {
		resealSecrets(ctx, st, log)
	}
	replica := cfg.ReplicaName()
	pricing, err := budget.LoadPricing(cfg.PricingFile)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("pricing table: %w", err)
	}
	s.cached = cache.Wrap(st, cache.Options{Notifier: st})
	s.life, s.endLife = context.WithCancel(context.WithoutCancel(ctx))
	if err := s.cached.Follow(s.life, st); err != nil {
		log.Warn("cache invalidation from other replicas unavailable; cached entries expire by TTL", "err", err)
	}
	metrics := gateway.NewMetrics(s.reg)
	var sink storage.AuditLog = st
	if cfg.auditSink != nil {
		sink = cfg.auditSink
	}
	s.writer = groupcommit.New(sink, groupcommit.Options{Chain: replica, Logger: log, Metrics: metrics})
	var auditor gateway.Auditor = s.writer
	if cfg.auditOff {
		auditor = dropAudit{}
	}
	core, err := gateway.NewCore(gateway.Options{
		Audit: auditor, Chain: replica, Logger: log, Metrics: metrics,
		Limits:       gateway.Limits{MaxPayloadBytes: cfg.MaxRequestBytes},
		AuditTimeout: cfg.AuditTimeout,
		Counters:     st,
		Pricing:      pricing,
		Agents:       agentStatuses{s},
		Approvals:    st,
	})
	if err != nil {
		s.closeStore()
		return nil, err
	}
	s.core = core
	s.reg.MustRegister(core.PendingApprovals())
	s.reloader = gateway.NewReloader(cfg.PolicyPath, core, log, cfg.PolicyPoll)
	s.reloader.UseStore(st)
	if err := s.reloader.Load(); err != nil {
		s.closeStore()
		return nil, fmt.Errorf("initial policy is invalid, refusing to start: %w", err)
	}
	if err := s.startLifecycle(ctx); err != nil {
		s.closeStore()
		return nil, fmt.Errorf("start agent lifecycle: %w", err)
	}
	if err := s.loadCheckpointSigner(ctx); err != nil {
		s.closeStore()
		return nil, err
	}
	s.checkpointer = newCheckpointer(s)
	if s.tracing, err = tracing.New(ctx, tracing.Options{
		Endpoint: cfg.OTLPEndpoint, Insecure: cfg.OTLPInsecure, SampleRatio: cfg.TraceSampleRatio,
		ServiceName: "aa-gateway", Version: Version, Replica: replica,
	}); err != nil {
		s.closeStore()
		return nil, err
	}
	if s.tls, err = serverTLS(cfg); err != nil {
		s.closeStore()
		return nil, err
	}
	if err := s.buildAuth(ctx); err != nil {
		s.closeStore()
		return nil, fmt.Errorf("operator authentication: %w", err)
	}
	if err := s.buildAlerts(); err != nil {
		s.closeStore()
		return nil, err
	}
	s.buildGRPC()
	if err := s.buildXDS(); err != nil {
		s.closeStore()
		return nil, err
	}
	if err := s.buildHTTP(ctx); err != nil {
		s.closeStore()
		return nil, err
	}
	return s, nil
}

// Core returns the decision core (for in-process adapters and tests).
func (s *Server) Core() *gateway.Core { return s.core }

// Reloader returns the policy reloader (SIGHUP calls Trigger).
func (s *Server) Reloader() *gateway.Reloader { return s.reloader }

// Store returns the opened store.
func (s *Server) Store() storage.Store { return s.store }

// durability is the audit durability the store runs: --audit-durability,
// unless the store URL's durability parameter overrode it.
func (s *Server) durability() string {
	if d, ok := s.store.(durabilityReporter); ok {
		return string(d.AuditDurability())
	}
	return s.cfg.AuditDurability
}

// durabilityReporter is a store that says which audit durability it runs
// (the SQLite and PostgreSQL drivers).
type durabilityReporter interface{ AuditDurability() storage.Durability }

// flushWindower is a store that says how soon an os-durability audit record
// reaches the disk (the SQLite driver).
type flushWindower interface{ FlushWindow() time.Duration }

// streamWorkers is how many long-lived goroutines serve incoming RPCs
// (beyond them, grpc-go starts one goroutine per RPC as usual). A check runs
// deep enough (interceptors, decision core, policy evaluation) to outgrow a
// fresh goroutine's stack, and copying grown stacks was 8-10% of the CPU of
// a check in BenchmarkCheckActionGRPC and ext_authz's BenchmarkCheckGRPC;
// workers keep their grown stacks (grpc-go replaces each after 65,536 RPCs).
// It is a variable so benchmarks can compare with workers off.
var streamWorkers = uint32(max(64, 32*goruntime.GOMAXPROCS(0)))

// hotMethods get no request id (no id made, no response header): the
// checks Envoy and the SDKs make on every action, whose logs carry the
// decision_id instead.
var hotMethods = []string{
	v1.PolicyService_CheckAction_FullMethodName,
	authv3.Authorization_Check_FullMethodName,
	procv3.ExternalProcessor_Process_FullMethodName,
}

func (s *Server) buildGRPC() {
	cdc := codec.New()
	s.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "aa", Subsystem: "extauthz", Name: "requests_decoded_slowly_total",
		Help: "ext_authz CheckRequests the gateway's fast reader left to protobuf-go (a shape it does not read, or malformed).",
	}, func() float64 { return float64(cdc.SlowRequests()) }))
	opts := []grpc.ServerOption{
		// The transport cap sits well above the per-action limit so that the
		// decision core, not the transport, rejects (and audits) oversized actions.
		grpc.MaxRecvMsgSize(4*s.cfg.MaxRequestBytes + (64 << 10)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Protobuf as grpc-go's codec, with a faster path for ext_authz
		// Check messages (extauthz/codec).
		grpc.ForceServerCodecV2(cdc),
		// One unary interceptor: grpc-go's chain of several costs an
		// allocation per link per call (unaryInterceptor).
		grpc.UnaryInterceptor(s.unaryInterceptor()),
		// The caller's trace first, so every stream's context carries it.
		grpc.ChainStreamInterceptor(s.tracing.StreamInterceptor(), tracing.StreamRequestID(hotMethods...), recoverStream(s.log), s.auth.StreamInterceptor(), drainStream(s.draining), s.runtimes.interceptor()),
	}
	opts = append(s.tracing.StatsHandler(), opts...)
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	if streamWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(streamWorkers))
	}
	s.grpc = grpc.NewServer(opts...)
	v1.RegisterPolicyServiceServer(s.grpc, gateway.NewPolicyService(s.core).WithVersions(s.reloader).WithAudit(s.store).WithAgentAuth(s.agentAuth))
	v1.RegisterTopologyServiceServer(s.grpc, gateway.NewTopologyService(s.store))
	v1.RegisterAuditServiceServer(s.grpc, gateway.NewAuditService(s.store).WithReports(s.core, s.store).WithAgentAuth(s.agentAuth).WithCheckpointKey(s.checkpoints.PublicKey()))
	v1.RegisterApprovalServiceServer(s.grpc, gateway.NewApprovalService(s.core).WithAgentAuth(s.agentAuth))
	v1.RegisterSecretsServiceServer(s.grpc, gateway.NewSecretsService(s.core, s.store).WithAgentAuth(s.agentAuth))
	extauthz.New(s.core, extauthz.Options{Logger: s.log, Timeout: s.cfg.ExtAuthzTimeout, Secrets: s.store, Injections: s.injections, Metrics: extauthz.NewMetrics(s.reg), Auth: s.agentAuth}).Register(s.grpc)
	extproc.New(s.core, extproc.Options{Logger: s.log, Metrics: extproc.NewMetrics(s.reg), Auth: s.agentAuth}).Register(s.grpc)
	v1.RegisterAgentLifecycleServiceServer(s.grpc, s.agents)
	v1.RegisterInvalidationServiceServer(s.grpc, gateway.NewInvalidationService(s.events).WithAgentAuth(s.agentAuth))
	v1.RegisterAdminServiceServer(s.grpc, gateway.NewAdminService(s).WithKeys(s.store, s.core).WithTokenKeys(s))
	s.registerAlertServices()
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
}

// injections lists the allowlist entries with an inject block that apply to
// agent under the active policy (cached per agent and policy version).
func (s *Server) injections(agent action.AgentID) []policy.Injection {
	return s.core.Settings(agent).Injections
}

func (s *Server) buildHTTP(ctx context.Context) error {
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}),
		runtime.WithMiddlewares(s.auth.Middleware(s.routes)),
	)
	if err := v1.RegisterPolicyServiceHandlerServer(ctx, gw, gateway.NewPolicyService(s.core).WithVersions(s.reloader).WithAudit(s.store).WithAgentAuth(s.agentAuth)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterTopologyServiceHandlerServer(ctx, gw, gateway.NewTopologyService(s.store)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterAuditServiceHandlerServer(ctx, gw, gateway.NewAuditService(s.store).WithReports(s.core, s.store).WithAgentAuth(s.agentAuth).WithCheckpointKey(s.checkpoints.PublicKey())); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterApprovalServiceHandlerServer(ctx, gw, gateway.NewApprovalService(s.core).WithAgentAuth(s.agentAuth)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterSecretsServiceHandlerServer(ctx, gw, gateway.NewSecretsService(s.core, s.store).WithAgentAuth(s.agentAuth)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterAgentLifecycleServiceHandlerServer(ctx, gw, s.agents); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := s.registerXDSREST(ctx, gw); err != nil {
		return err
	}
	if err := s.registerAdminREST(ctx, gw); err != nil {
		return err
	}
	if err := s.registerAlertREST(ctx, gw); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", limitBody(gw, int64(4*s.cfg.MaxRequestBytes+(64<<10))))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.JSON)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	if s.cfg.DebugPprof {
		mux.Handle("/debug/pprof/", s.auth.Handler(auth.MethodPprof, pprofHandler()))
	}
	s.http = &http.Server{Handler: tracing.HTTPRequestID(mux), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return nil
}

// readyz reports ready when a policy is serving and the store answers.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	body := map[string]any{"status": "ready", "replica": s.cfg.ReplicaName()}
	code := http.StatusOK
	if snap := s.core.Snapshot(); snap != nil {
		body["policy_version"] = snap.Version()
	} else {
		code, body["status"], body["policy"] = http.StatusServiceUnavailable, "not ready", "no policy loaded"
	}
	if err := s.reloader.LastError(); err != nil {
		body["policy_last_error"] = err.Error()
	}
	if err := s.store.Ping(ctx); err != nil {
		code, body["status"], body["store"] = http.StatusServiceUnavailable, "not ready", err.Error()
	}
	writeJSON(w, code, body)
}

// Serve serves gRPC on grpcL and HTTP on httpL (which may be nil) until ctx
// ends, then stops gracefully: new requests are refused, in-flight ones
// finish within ShutdownTimeout, and the audit writer is flushed.
func (s *Server) Serve(ctx context.Context, grpcL, httpL net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.reloader.Run(ctx); err != nil {
			s.log.Error("policy reloader stopped", "err", err)
		}
	}()
	s.runXDS(ctx, &wg)
	s.runCheckpoints(ctx, &wg)
	s.runTokenKeyRefresh(ctx, &wg)
	go func() {
		if err := s.grpc.Serve(grpcL); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("serve gRPC on %s: %w", grpcL.Addr(), err)
		}
	}()
	if httpL != nil && s.tls != nil {
		httpL = tls.NewListener(httpL, s.tls)
	}
	if httpL != nil {
		go func() {
			if err := s.http.Serve(httpL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve HTTP on %s: %w", httpL.Addr(), err)
			}
		}()
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{v1.PolicyService_ServiceDesc.ServiceName, v1.AuditService_ServiceDesc.ServiceName, v1.ApprovalService_ServiceDesc.ServiceName, "envoy.service.auth.v3.Authorization"} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	httpAddr := ""
	if httpL != nil {
		httpAddr = httpL.Addr().String()
	}
	attrs := []any{"grpc", grpcL.Addr().String(), "http", httpAddr,
		"replica", s.cfg.ReplicaName(), "store", redactURL(s.cfg.Store), "durability", s.durability()}
	if fw, ok := s.store.(flushWindower); ok {
		if w := fw.FlushWindow(); w > 0 {
			attrs = append(attrs, "flush_window", w)
		}
	}
	s.log.Info("gateway serving", append(attrs, "policy_version", s.core.Snapshot().Version(), "version", Version)...)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	cancel()
	wg.Wait()
	return errors.Join(serveErr, s.shutdown())
}

// shutdown stops listeners gracefully, then flushes the audit log.
func (s *Server) shutdown() error {
	s.log.Info("shutting down", "grace", s.cfg.ShutdownTimeout)
	s.health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if s.http != nil {
		if err := s.http.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("stop HTTP: %w", err))
		}
	}
	close(s.draining) // streams end; unary calls in flight finish
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		s.grpc.Stop()
		errs = append(errs, errors.New("stop gRPC: grace period over, in-flight calls cancelled"))
	}
	// The final audit flush gets its own deadline: a grace period used up
	// by slow callers must not cost the records they were answered with.
	fctx, fcancel := context.WithTimeout(context.Background(), max(s.cfg.ShutdownTimeout, 5*time.Second))
	defer fcancel()
	if s.cfg.AuditCheckpointInterval > 0 {
		// The last records are vouched for by a checkpoint too.
		if err := s.checkpointer.checkpoint(fctx); err != nil {
			s.log.Warn("final audit checkpoint", "err", err)
		}
	}
	if err := s.writer.Close(fctx); err != nil {
		errs = append(errs, fmt.Errorf("flush audit log: %w", err))
	}
	if err := s.closeAlerts(fctx); err != nil {
		s.log.Warn("alerts not flushed", "err", err)
	}
	if err := s.tracing.Shutdown(fctx); err != nil {
		s.log.Warn("traces not flushed", "err", err)
	}
	s.endLife()
	if err := s.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// Close releases what New opened (audit writer, store) for a server that
// will not Serve, e.g. because its listeners could not be opened.
func (s *Server) Close() { s.closeStore() }

func (s *Server) closeStore() {
	if s.alerts != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.closeAlerts(ctx)
		cancel()
	}
	if s.writer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.writer.Close(ctx)
		cancel()
	}
	if s.endLife != nil {
		s.endLife()
	}
	if s.tracing != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.tracing.Shutdown(ctx)
		cancel()
	}
	_ = s.store.Close()
}

// Run listens on the configured addresses and serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	s, err := New(ctx, cfg, log)
	if err != nil {
		return err
	}
	grpcL, err := Listen(cfg.GRPCAddr)
	if err != nil {
		s.closeStore()
		return err
	}
	var httpL net.Listener
	if cfg.APIAddr != "" {
		if httpL, err = Listen(cfg.APIAddr); err != nil {
			grpcL.Close()
			s.closeStore()
			return err
		}
	}
	return s.Serve(ctx, grpcL, httpL)
}

// Listen opens host:port or unix:/path (a stale socket file is replaced).
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		path = strings.TrimPrefix(path, "//")
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listen %s: remove stale socket: %w", addr, err)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen %s: chmod: %w", addr, err)
		}
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w (is another gateway running? set --grpc-addr/--api-addr)", addr, err)
	}
	return l, nil
}

func ensureDataDir(cfg Config) error {
	for _, p := range []string{cfg.SecretsKeyFile, sqlitePath(cfg.Store)} {
		if p == "" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("create data directory for %s: %w", p, err)
		}
	}
	return nil
}

func sqlitePath(store string) string {
	p, ok := strings.CutPrefix(store, "sqlite:")
	if !ok {
		return ""
	}
	return strings.TrimPrefix(p, "//")
}

// redactURL hides a password in a store URL for logs.
func redactURL(u string) string {
	at := strings.LastIndex(u, "@")
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return u
	}
	userinfo := u[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return u[:scheme+3] + user + ":xxxxx" + u[at:]
	}
	return u
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// limitBody rejects bodies over max with 413 before they are read.
func limitBody(h http.Handler, max int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]any{
				"code": int(codes.InvalidArgument), "message": fmt.Sprintf("request body is %d bytes, over the limit of %d", r.ContentLength, max),
			})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, max)
		h.ServeHTTP(w, r)
	})
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
				err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
			}
		}()
		return h(ctx, req)
	}
}

// drainStream ends a stream's context when draining is closed, so handlers
// that wait on it (tails, watches, control and invalidation streams) return
// and graceful stop does not wait out its grace period on them.
func drainStream(draining <-chan struct{}) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			select {
			case <-draining:
				cancel()
			case <-ctx.Done():
			}
		}()
		return h(srv, drainingStream{ss, ctx})
	}
}

// drainingStream is a ServerStream whose context ends on shutdown.
type drainingStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (d drainingStream) Context() context.Context { return d.ctx }

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				log.ErrorContext(ss.Context(), "panic in stream handler", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
				err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
			}
		}()
		return h(srv, ss)
	}
}

// dropAudit discards audit records: Config.auditOff, for benchmarks only.
type dropAudit struct{}

func (dropAudit) Append(context.Context, *storage.AuditRecord) error { return nil }

// AppendUntil discards r too: dropping never waits, so it honours any
// deadline (the core then decides ext_authz Checks inline, as with the
// group-commit writer).
func (dropAudit) AppendUntil(context.Context, *storage.AuditRecord, time.Time) error { return nil }

// pprofHandler serves net/http/pprof's pages under /debug/pprof/: the index
// and every named profile, and the CPU profile, execution trace, command
// line and symbol lookup, which the index does not route.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
