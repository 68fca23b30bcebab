package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Defaults of Options.
const (
	DefaultEgressAddr          = "127.0.0.1:15001"
	DefaultMaxRequestBodyBytes = 64 << 10
	DefaultAuthzTimeout        = 250 * time.Millisecond
	DefaultUpstreamTimeout     = 120 * time.Second
	DefaultConnectTimeout      = 5 * time.Second
	DefaultCAFile              = "/etc/ssl/certs/ca-certificates.crt"
	DefaultBackoffBase         = time.Second
	DefaultBackoffMax          = 30 * time.Second
	DefaultPollInterval        = time.Second
	DefaultNodeTTL             = time.Hour
)

// PolicySource gives the serving policy snapshot; *gateway.Core implements it.
type PolicySource interface {
	Snapshot() *policy.Snapshot
}

// AgentLister lists registered agents, so their nodes have a snapshot
// before they first connect.
type AgentLister func(ctx context.Context) ([]action.AgentID, error)

// Options configure a Server. Zero values take the defaults above.
type Options struct {
	// GatewayAddr is the gateway's gRPC address as sidecars reach it
	// (host:port): the ext_authz and ext_proc filters call it. Required.
	GatewayAddr string
	// EgressAddr is where the sidecar's egress listener binds.
	EgressAddr string
	// DisableExtProc leaves out the ext_proc filter (request body
	// redaction, LLM usage from responses), which is on by default.
	DisableExtProc bool
	// MaxRequestBodyBytes bounds the body ext_authz sends to the gateway.
	MaxRequestBodyBytes uint32
	// AuthzTimeout bounds each ext_authz check and ext_proc message.
	AuthzTimeout time.Duration
	// UpstreamTimeout bounds a request to an allowed destination.
	UpstreamTimeout time.Duration
	// ConnectTimeout bounds connecting to an upstream.
	ConnectTimeout time.Duration
	// CAFile is the CA bundle (path on the sidecar) that upstream TLS
	// certificates are checked against.
	CAFile string
	// Endpoints finds the addresses of destinations for gRPC clients
	// (default: DNS through net.DefaultResolver).
	Endpoints EndpointSource
	// Agents, when set, lists registered agents.
	Agents AgentLister
	// Logger receives NACKs and errors; default discards.
	Logger *slog.Logger
	// Registry, when set, receives the xDS metrics.
	Registry prometheus.Registerer
	// BackoffBase and BackoffMax bound the delay before a NACKed version is
	// offered again to the same node.
	BackoffBase, BackoffMax time.Duration
	// PollInterval is how often Run checks the policy source for a snapshot
	// it was not notified of (0: the default; negative: only Notify).
	PollInterval time.Duration
	// NodeTTL is how long a node without a stream, not listed by Agents,
	// keeps its snapshot and status.
	NodeTTL time.Duration
	// OnNack, when set, is called each time a node rejects a resource
	// type (node id, type URL, rejected version, Envoy's error). It runs
	// under the server's lock and must not block.
	OnNack func(node, typeURL, version, detail string)
	// Authenticate, when set, proves the agent of every ADS stream as it
	// opens (from the stream's x-aa-credential-token metadata or client
	// certificate; *gateway.AgentAuth via AuthenticateStream). A stream
	// whose node id names another agent is refused. The credential token,
	// when one was presented, is written into the node's ext_authz context
	// extensions (ContextExtToken), so the node's checks carry it.
	Authenticate func(ctx context.Context) (agent action.AgentID, token string, err error)

	now    func() time.Time                                  // tests: the clock
	after  timerFunc                                         // tests: replaces time.AfterFunc
	tamper func(node string, res map[string][]typesResource) // tests: corrupts resources
}

// withDefaults fills zero values and validates the rest.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.GatewayAddr == "" {
		errs = append(errs, errors.New("gateway address is required (the gateway's gRPC host:port as sidecars reach it)"))
	} else if _, _, err := splitHostPort(o.GatewayAddr); err != nil {
		errs = append(errs, fmt.Errorf("gateway address: %w", err))
	}
	if o.EgressAddr == "" {
		o.EgressAddr = DefaultEgressAddr
	} else if _, _, err := splitHostPort(o.EgressAddr); err != nil {
		errs = append(errs, fmt.Errorf("egress address: %w", err))
	}
	if o.MaxRequestBodyBytes == 0 {
		o.MaxRequestBodyBytes = DefaultMaxRequestBodyBytes
	}
	if o.AuthzTimeout == 0 {
		o.AuthzTimeout = DefaultAuthzTimeout
	}
	if o.UpstreamTimeout == 0 {
		o.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.AuthzTimeout < 0 || o.UpstreamTimeout < 0 || o.ConnectTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if o.CAFile == "" {
		o.CAFile = DefaultCAFile
	}
	if o.Endpoints == nil {
		o.Endpoints = DNSEndpoints(net.DefaultResolver)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.BackoffBase == 0 {
		o.BackoffBase = DefaultBackoffBase
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffBase < 0 || o.BackoffMax < o.BackoffBase {
		errs = append(errs, fmt.Errorf("backoff: base %s must be positive and at most max %s", o.BackoffBase, o.BackoffMax))
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.NodeTTL == 0 {
		o.NodeTTL = DefaultNodeTTL
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.after == nil {
		o.after = realTimer
	}
	return o, errors.Join(errs...)
}

func netipParse(host string) (netip.Addr, error) { return netip.ParseAddr(host) }
