package runtime

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
	"github.com/agent-assembly/agent-assembly/runtime/cgroup"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// FailMode says what checks answer while the gateway is unreachable.
type FailMode string

// Fail modes.
const (
	// FailClosed denies every check while the gateway is unreachable.
	FailClosed FailMode = "closed"
	// FailOpenObserve allows checks of an agent whose policy the gateway last
	// reported in observe mode (observe-only deployments), and denies the rest.
	FailOpenObserve FailMode = "observe-open"
)

// Agent is one agent the runtime serves on its own socket.
type Agent struct {
	// ID is the agent's identity, attached to every request from its socket.
	ID action.AgentID
	// Socket is the Unix socket path to listen on (mode 0600, owned by UID).
	Socket string
	// UID is the only user id allowed to connect (checked with SO_PEERCRED).
	UID int
	// Token is the agent's credential token from registration, sent to the gateway.
	Token string
	// Group, when set, additionally requires the peer process to be in this cgroup.
	Group *cgroup.Group
	// OnControl, when set, receives the agent's control commands (suspend,
	// resume, kill) from the gateway; only with Options.Register.
	OnControl func(*v1.ControlCommand)
}

// Options configures a Runtime. Zero values take the defaults listed.
type Options struct {
	// Agents are the agents to serve. At least one is required.
	Agents []Agent
	// Gateway is the gateway's gRPC address (host:port or unix:///path),
	// used when Conn is nil. Several replicas are given comma-separated
	// ("10.0.0.1:50051,10.0.0.2:50051"): calls are spread over them, and a
	// call that fails because its replica died is retried on another (see
	// internal/gatewaydial).
	Gateway string
	// Conn, when set, is used instead of dialling Gateway.
	Conn grpc.ClientConnInterface
	// BufferPath is the SQLite file of the durable event buffer. Required.
	BufferPath string
	// Name prefixes the buffer's reporter id and names this runtime to the
	// invalidation stream. Default: "runtime/<hostname>/".
	Name string
	// Logger receives the runtime's logs. Default: discard.
	Logger *slog.Logger
	// CheckTimeout bounds one gateway check. Default 400ms (under the SDK's 500ms default).
	CheckTimeout time.Duration
	// ApprovalTimeout bounds a wait for a human approval. Default 10 minutes.
	ApprovalTimeout time.Duration
	// FailMode is what checks answer while the gateway is unreachable. Default FailClosed.
	FailMode FailMode
	// CacheTTL is how long a cached decision lives at most; negative disables
	// the cache. Default 60s. Cached entries are only used while the
	// invalidation stream is connected.
	CacheTTL time.Duration
	// CacheSize bounds the cached decisions. Default 10000.
	CacheSize int
	// MaxFrame is the largest frame body accepted. Default frame.DefaultMaxBody.
	MaxFrame int
	// MaxInflight bounds the concurrent requests of one connection. Default 64.
	MaxInflight int
	// Heartbeat is the interval the SDK is told to send heartbeats at. Default 10s.
	Heartbeat time.Duration
	// Version is reported in the handshake.
	Version string
	// Register makes the runtime register each agent without a Token with
	// the gateway's AgentLifecycleService (Ed25519 challenge, key kept in
	// KeyDir), use the issued token, heartbeat, and follow its control stream.
	Register bool
	// KeyDir holds the agents' Ed25519 keys. Default: next to BufferPath.
	KeyDir string
}

func (o *Options) setDefaults() {
	if o.Name == "" {
		host, _ := os.Hostname()
		o.Name = "runtime/" + host + "/"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CheckTimeout <= 0 {
		o.CheckTimeout = 400 * time.Millisecond
	}
	if o.ApprovalTimeout <= 0 {
		o.ApprovalTimeout = 10 * time.Minute
	}
	if o.FailMode == "" {
		o.FailMode = FailClosed
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = 60 * time.Second
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 10000
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = frame.DefaultMaxBody
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = 64
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 10 * time.Second
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.KeyDir == "" && o.BufferPath != "" {
		o.KeyDir = filepath.Join(filepath.Dir(o.BufferPath), "keys")
	}
}

// Validate reports the first bad option.
func (o *Options) Validate() error {
	if len(o.Agents) == 0 {
		return errors.New("runtime options: at least one agent is required")
	}
	seen := map[string]bool{}
	for i, a := range o.Agents {
		if a.ID.Org == "" || a.ID.Team == "" || a.ID.Agent == "" {
			return fmt.Errorf("runtime options: agents[%d]: id %q must be org/team/agent", i, a.ID.String())
		}
		if a.Socket == "" {
			return fmt.Errorf("runtime options: agent %s: a socket path is required", a.ID.String())
		}
		if !filepath.IsAbs(a.Socket) {
			return fmt.Errorf("runtime options: agent %s: socket path %q must be absolute", a.ID.String(), a.Socket)
		}
		if seen[a.Socket] {
			return fmt.Errorf("runtime options: agent %s: socket %s is used twice", a.ID.String(), a.Socket)
		}
		seen[a.Socket] = true
		if a.UID < 0 {
			return fmt.Errorf("runtime options: agent %s: uid %d is negative", a.ID.String(), a.UID)
		}
	}
	if o.Conn == nil && o.Gateway == "" {
		return errors.New("runtime options: a gateway address is required (--gateway host:port)")
	}
	if o.Conn == nil {
		if _, err := gatewaydial.Split(o.Gateway); err != nil {
			return fmt.Errorf("runtime options: --gateway: %w", err)
		}
	}
	if o.BufferPath == "" {
		return errors.New("runtime options: a buffer path is required (--buffer /var/lib/aa-runtime/events.db)")
	}
	switch o.FailMode {
	case FailClosed, FailOpenObserve:
	default:
		return fmt.Errorf("runtime options: fail mode %q must be %q or %q", o.FailMode, FailClosed, FailOpenObserve)
	}
	if o.MaxFrame < 1024 || o.MaxFrame > 64<<20 {
		return fmt.Errorf("runtime options: max frame %d must be between 1 KiB and 64 MiB", o.MaxFrame)
	}
	return nil
}

// ParseAgentID parses "org/team/agent".
func ParseAgentID(s string) (action.AgentID, error) {
	p := strings.Split(s, "/")
	if len(p) != 3 || p[0] == "" || p[1] == "" || p[2] == "" {
		return action.AgentID{}, fmt.Errorf("agent id %q must be org/team/agent", s)
	}
	return action.AgentID{Org: p[0], Team: p[1], Agent: p[2]}, nil
}
