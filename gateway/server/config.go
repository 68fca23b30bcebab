package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Config is everything aa-gateway can be told. Start from DefaultConfig,
// apply flags and environment with Bind, then call Validate.
type Config struct {
	// auditOff, set only by benchmarks in this package, drops every audit
	// record instead of writing it: the "same gateway, audit off" baseline
	// the audit path is measured against. No flag or setting reaches it.
	auditOff bool
	// auditSink, set only by benchmarks in this package, replaces the
	// store under the group-commit writer, to split the audit path's cost
	// between the hand-over to the writer and the store.
	auditSink storage.AuditLog

	GRPCAddr        string
	APIAddr         string
	PolicyPath      string
	PolicyPoll      time.Duration
	Store           string
	Counters        string
	AuditDurability string
	MaxRequestBytes int
	ReplicaID       string
	SecretsKeyFile  string
	// SecretsExtraKeyFiles hold keys that open stored secrets but never
	// seal (the key before or after a rotation); with SecretsReseal, the
	// secrets sealed with one are resealed with SecretsKeyFile's key at
	// start (secretkeys.go).
	SecretsExtraKeyFiles []string
	SecretsReseal        bool
	PricingFile          string
	AuditTimeout         time.Duration
	// AuditCheckpointInterval is how often this replica appends a signed
	// checkpoint to its audit chain when records were written (0: never).
	AuditCheckpointInterval time.Duration
	// ExtAuthzTimeout bounds one ext_authz Check; keep it under the Envoy
	// filter's own timeout (200ms by default).
	ExtAuthzTimeout time.Duration
	ShutdownTimeout time.Duration
	LogLevel        string
	LogFormat       string
	AllowRemote     bool
	// XDSAdvertiseAddr, XDSEgressAddr and XDSExtProc configure the xDS
	// control plane (see gateway/server/xds.go).
	XDSAdvertiseAddr string
	XDSEgressAddr    string
	XDSExtProc       bool
	// OTLPEndpoint, OTLPInsecure and TraceSampleRatio configure
	// OpenTelemetry tracing (off when the endpoint is empty).
	OTLPEndpoint     string
	OTLPInsecure     bool
	TraceSampleRatio float64
	// DebugPprof serves Go's runtime profiles (net/http/pprof) under
	// /debug/pprof/ on the HTTP listener, to admin keys only.
	DebugPprof bool
	// AgentAuth ("token" or "off") and AgentSPIFFETrustDomain configure
	// agent authentication on the agent-facing surfaces (agentauth.go).
	AgentAuth              string
	AgentSPIFFETrustDomain string
	// Auth ("on" or "off") turns operator authentication on; the
	// bootstrap key settings and AdminKeyFile configure the first admin key
	// (auth.go). BootstrapAdminKey comes only from $AA_BOOTSTRAP_ADMIN_KEY.
	Auth                  string
	BootstrapAdminKeyFile string
	BootstrapAdminKey     string
	AdminKeyFile          string
	// KeyOut is where a generated bootstrap admin key is shown (os.Stderr
	// when nil). It is not a setting: tests capture the key with it.
	KeyOut io.Writer
	// TLSCertFile, TLSKeyFile and TLSClientCAFile configure TLS on both
	// listeners (tls.go).
	TLSCertFile     string
	TLSKeyFile      string
	TLSClientCAFile string
	// AlertWebhooks receive alerts signed with the secret in
	// AlertWebhookSecretFile (alerts.go).
	AlertWebhooks          []string
	AlertWebhookSecretFile string
}

// Setting describes one configuration knob: its flag, environment variable,
// default and meaning. Settings is the single source for flags, env and the
// README's configuration table.
type Setting struct {
	Flag    string
	Env     string
	Default string
	Help    string
	set     func(c *Config, v string) error
}

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	var c Config
	for _, s := range Settings() {
		if err := s.set(&c, s.Default); err != nil {
			panic("bad default for " + s.Flag + ": " + err.Error()) // programming error, caught by tests
		}
	}
	return c
}

// Settings lists every configuration knob in documentation order.
func Settings() []Setting {
	str := func(p func(*Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *p(c) = v; return nil }
	}
	dur := func(p func(*Config) *time.Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("not a duration (like 500ms, 2s, 1m): %q", v)
			}
			*p(c) = d
			return nil
		}
	}
	boolean := func(p func(*Config) *bool) func(*Config, string) error {
		return func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("not a boolean: %q", v)
			}
			*p(c) = b
			return nil
		}
	}
	list := func(p func(*Config) *[]string) func(*Config, string) error {
		return func(c *Config, v string) error { *p(c) = commaList(v); return nil }
	}
	return []Setting{
		{"grpc-addr", "AA_GRPC_ADDR", "127.0.0.1:50051", "gRPC listener (PolicyService, ext_authz, health, reflection): host:port or unix:/path", str(func(c *Config) *string { return &c.GRPCAddr })},
		{"api-addr", "AA_API_ADDR", "127.0.0.1:7700", "HTTP listener: REST API (/v1/...), /openapi.json, /healthz, /readyz, /metrics", str(func(c *Config) *string { return &c.APIAddr })},
		{"policy", "AA_POLICY", "examples/policies", "policy file or directory of *.yaml documents, hot-reloaded on change and on SIGHUP", str(func(c *Config) *string { return &c.PolicyPath })},
		{"policy-poll", "AA_POLICY_POLL", "2s", "polling fallback for policy changes (0 disables polling; file events still apply)", dur(func(c *Config) *time.Duration { return &c.PolicyPoll })},
		{"store", "AA_STORE", "sqlite:./data/aa.db", "durable store: sqlite:PATH, postgres://..., or memory: (tests only, loses the audit log on exit)", str(func(c *Config) *string { return &c.Store })},
		{"counters", "AA_COUNTERS", "", "budget and rate counters: redis://host:port/db, or empty to keep them in the store", str(func(c *Config) *string { return &c.Counters })},
		{"audit-durability", "AA_AUDIT_DURABILITY", "sync", "sync: fsync/synchronous commit before answering (survives power loss); os: written to the OS/database before answering, on disk within the flush window, 50 ms by default (survives a gateway crash)", str(func(c *Config) *string { return &c.AuditDurability })},
		{"max-request-bytes", "AA_MAX_REQUEST_BYTES", "1048576", "limit on an action's variable-size fields (tool args, prompt, output); larger requests get INVALID_ARGUMENT / HTTP 400", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("not an integer: %q", v)
			}
			c.MaxRequestBytes = n
			return nil
		}},
		{"replica-id", "AA_REPLICA_ID", "", "this replica's name and audit chain id (default: the host name)", str(func(c *Config) *string { return &c.ReplicaID })},
		{"secrets-key-file", "AA_SECRETS_KEY_FILE", "./data/secrets.key", "32-byte key that encrypts stored secrets; created (0600) on first start", str(func(c *Config) *string { return &c.SecretsKeyFile })},
		{"secrets-extra-key-files", "AA_SECRETS_EXTRA_KEY_FILES", "", "comma-separated key files that open stored secrets but never seal: the key before a rotation (or, while replicas roll over, the one after); see docs/operations.md", list(func(c *Config) *[]string { return &c.SecretsExtraKeyFiles })},
		{"secrets-reseal", "AA_SECRETS_RESEAL", "true", "at start, reseal with --secrets-key-file every stored secret sealed with a key from --secrets-extra-key-files (false only while replicas learn a new key)", boolean(func(c *Config) *bool { return &c.SecretsReseal })},
		{"pricing", "AA_PRICING", "", "YAML file of LLM prices (USD per 1k tokens) merged over the built-in table; see docs/budgets.md", str(func(c *Config) *string { return &c.PricingFile })},
		{"audit-timeout", "AA_AUDIT_TIMEOUT", "2s", "longest a check waits for its audit record to become durable before it is denied (fail closed)", dur(func(c *Config) *time.Duration { return &c.AuditTimeout })},
		{"audit-checkpoint-interval", "AA_AUDIT_CHECKPOINT_INTERVAL", "1m", "how often the replica appends a signed checkpoint to its audit chain (when records were written since the last; and one at shutdown), so that a rewrite of the whole database is detected; 0 turns them off", dur(func(c *Config) *time.Duration { return &c.AuditCheckpointInterval })},
		{"extauthz-timeout", "AA_EXTAUTHZ_TIMEOUT", "150ms", "longest an Envoy ext_authz Check waits for its decision before it is denied with 503 (fail closed): the decision's waits on stores (registry, limits, audit write) end by then; keep it under the ext_authz filter's timeout in Envoy (250ms in the gateway's xDS configuration, 200ms by Envoy's default)", dur(func(c *Config) *time.Duration { return &c.ExtAuthzTimeout })},
		{"shutdown-timeout", "AA_SHUTDOWN_TIMEOUT", "10s", "grace period for in-flight requests and the final audit flush on SIGINT/SIGTERM", dur(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"log-level", "AA_LOG_LEVEL", "info", "debug, info, warn or error", str(func(c *Config) *string { return &c.LogLevel })},
		{"log-format", "AA_LOG_FORMAT", "text", "text or json", str(func(c *Config) *string { return &c.LogFormat })},
		{"allow-remote", "AA_ALLOW_REMOTE", "false", "allow listening on non-loopback addresses without TLS", boolean(func(c *Config) *bool { return &c.AllowRemote })},
		{"auth", "AA_AUTH", "on", "on: every operator call (gRPC and REST) needs an API key (Authorization: Bearer aak_...) or an operator client certificate with the method's role (viewer, operator, admin); off: no operator authentication (development only, refused on a non-loopback listener)", str(func(c *Config) *string { return &c.Auth })},
		{"bootstrap-admin-key-file", "AA_BOOTSTRAP_ADMIN_KEY_FILE", "", "file holding the admin key (aak_<id>_<secret>) to store when no admin key exists; the key itself may instead be in $AA_BOOTSTRAP_ADMIN_KEY; with neither, one is generated and shown once", str(func(c *Config) *string { return &c.BootstrapAdminKeyFile })},
		{"admin-key-file", "AA_ADMIN_KEY_FILE", "", "where a generated bootstrap admin key is also written (0600), for aasm login --key-file (default: admin.key beside --secrets-key-file, so ./data/admin.key); none: only shown on stderr", str(func(c *Config) *string { return &c.AdminKeyFile })},
		{"tls-cert", "AA_TLS_CERT", "", "PEM certificate (chain) served on both listeners; with --tls-key turns TLS on (re-read when the file changes)", str(func(c *Config) *string { return &c.TLSCertFile })},
		{"tls-key", "AA_TLS_KEY", "", "PEM private key of --tls-cert", str(func(c *Config) *string { return &c.TLSKeyFile })},
		{"tls-client-ca", "AA_TLS_CLIENT_CA", "", "PEM CA bundle that client certificates are verified against when a client offers one (operator certificates: URI SAN aasm://role/<role>/<name>; agents: spiffe://...)", str(func(c *Config) *string { return &c.TLSClientCAFile })},
		{"agent-auth", "AA_AGENT_AUTH", "token", "token: every agent-facing call (CheckAction, ext_authz, ADS, ReportEvents, ...) must prove the agent it names with its credential token or an agent client certificate; off: trust the named agent (development only, refused on a non-loopback listener)", str(func(c *Config) *string { return &c.AgentAuth })},
		{"agent-spiffe-trust-domain", "AA_AGENT_SPIFFE_TRUST_DOMAIN", "agent-assembly", "trust domain of agent client certificates: a verified certificate with URI SAN spiffe://<domain>/agent/<org>/<team>/<agent> authenticates that agent", str(func(c *Config) *string { return &c.AgentSPIFFETrustDomain })},
		{"xds-advertise-addr", "AA_XDS_ADVERTISE_ADDR", "", "host:port at which Envoy sidecars reach this gateway's gRPC listener, written into the resources served over xDS (default: --grpc-addr)", str(func(c *Config) *string { return &c.XDSAdvertiseAddr })},
		{"xds-egress-addr", "AA_XDS_EGRESS_ADDR", "127.0.0.1:15001", "address of the egress listener that xDS gives each Envoy sidecar (agents use it as HTTP_PROXY)", str(func(c *Config) *string { return &c.XDSEgressAddr })},
		{"xds-ext-proc", "AA_XDS_EXT_PROC", "true", "add the ext_proc filter (request body redaction, LLM usage from responses) after ext_authz in the sidecars' egress listener", boolean(func(c *Config) *bool { return &c.XDSExtProc })},
		{"otlp-endpoint", "AA_OTLP_ENDPOINT", "", "OpenTelemetry collector (OTLP/gRPC host:port) for traces of every gRPC call; empty turns tracing off", str(func(c *Config) *string { return &c.OTLPEndpoint })},
		{"otlp-insecure", "AA_OTLP_INSECURE", "false", "send traces to the collector without TLS", boolean(func(c *Config) *bool { return &c.OTLPInsecure })},
		{"debug-pprof", "AA_DEBUG_PPROF", "false", "serve Go's runtime profiles (CPU, heap, goroutines, execution trace; net/http/pprof) under /debug/pprof/ on the HTTP listener, to admin API keys only", boolean(func(c *Config) *bool { return &c.DebugPprof })},
		{"trace-sample-ratio", "AA_TRACE_SAMPLE_RATIO", "1", "share of new traces sampled (0..1); calls that arrive with a sampled traceparent are always traced", func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				return fmt.Errorf("not a number between 0 and 1: %q", v)
			}
			c.TraceSampleRatio = f
			return nil
		}},
		{"alert-webhook", "AA_ALERT_WEBHOOK", "", "comma-separated http(s) URLs that receive each alert as a signed JSON POST (X-AA-Signature, retried with backoff; see docs/alerts.md)", list(func(c *Config) *[]string { return &c.AlertWebhooks })},
		{"alert-webhook-secret-file", "AA_ALERT_WEBHOOK_SECRET_FILE", "", "file holding the HMAC-SHA256 secret (at least 16 bytes) that signs alert webhooks; required with --alert-webhook", str(func(c *Config) *string { return &c.AlertWebhookSecretFile })},
	}
}

// Bind registers every setting as a flag on fs whose default comes from the
// environment variable when set. Call fs.Parse afterwards; the result lands in c.
func Bind(fs *flag.FlagSet, c *Config, getenv func(string) string) error {
	var errs []error
	for _, s := range Settings() {
		def := s.Default
		if v := getenv(s.Env); v != "" {
			def = v
		}
		if err := s.set(c, def); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.Env, err))
		}
		usage := fmt.Sprintf("%s (env %s, default %q)", s.Help, s.Env, s.Default)
		set := func(v string) error { return s.set(c, v) }
		if s.Default == "true" || s.Default == "false" {
			// A switch: --allow-remote alone means true, --xds-ext-proc=false turns one off.
			fs.BoolFunc(s.Flag, usage, set)
		} else {
			fs.Func(s.Flag, usage, set)
		}
	}
	c.BootstrapAdminKey = getenv(BootstrapKeyEnv) // no flag: a key must not show in a process list
	return errors.Join(errs...)
}

// Validate rejects bad values and combinations, naming the setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if c.GRPCAddr == "" {
		bad("grpc-addr", "is required")
	} else if err := c.checkAddr(c.GRPCAddr); err != nil {
		bad("grpc-addr", "%v", err)
	}
	if c.APIAddr != "" {
		if strings.HasPrefix(c.APIAddr, "unix:") {
			bad("api-addr", "must be host:port")
		} else if err := c.checkAddr(c.APIAddr); err != nil {
			bad("api-addr", "%v", err)
		}
	}
	if c.PolicyPath == "" {
		bad("policy", "is required: a policy file or directory (see examples/policies)")
	}
	if c.PolicyPoll < 0 {
		bad("policy-poll", "must not be negative")
	}
	if c.Store == "" {
		bad("store", "is required, e.g. sqlite:./data/aa.db")
	}
	switch storage.Durability(c.AuditDurability) {
	case storage.DurabilitySync, storage.DurabilityOS:
	default:
		bad("audit-durability", "must be sync or os, not %q", c.AuditDurability)
	}
	if c.MaxRequestBytes < 1024 || c.MaxRequestBytes > 64<<20 {
		bad("max-request-bytes", "must be between 1024 and %d, not %d", 64<<20, c.MaxRequestBytes)
	}
	if c.AuditTimeout <= 0 {
		bad("audit-timeout", "must be positive")
	}
	if c.AuditCheckpointInterval != 0 && c.AuditCheckpointInterval < 100*time.Millisecond {
		bad("audit-checkpoint-interval", "must be 0 (off) or at least 100ms, not %s", c.AuditCheckpointInterval)
	}
	if c.ExtAuthzTimeout <= 0 {
		bad("extauthz-timeout", "must be positive")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown-timeout", "must be positive")
	}
	for _, a := range []struct{ flag, addr string }{{"xds-advertise-addr", c.XDSAdvertiseAddr}, {"xds-egress-addr", c.XDSEgressAddr}} {
		if a.addr == "" && a.flag == "xds-advertise-addr" {
			continue
		}
		if h, p, err := net.SplitHostPort(a.addr); err != nil || h == "" {
			bad(a.flag, "must be host:port, not %q", a.addr)
		} else if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			bad(a.flag, "%q has a bad port", a.addr)
		}
	}
	errs = append(errs, c.validateAgentAuth()...)
	errs = append(errs, c.validateAuth()...)
	errs = append(errs, c.validateTLS()...)
	errs = append(errs, c.validateAlerts()...)
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "must be debug, info, warn or error, not %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log-format", "must be text or json, not %q", c.LogFormat)
	}
	return errors.Join(errs...)
}

// checkAddr parses a listen address and refuses non-loopback hosts unless
// TLS is on or AllowRemote is set.
func (c *Config) checkAddr(addr string) error {
	if strings.HasPrefix(addr, "unix:") {
		if strings.TrimPrefix(strings.TrimPrefix(addr, "unix:"), "//") == "" {
			return errors.New("unix socket path is empty")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q has a bad port", addr)
	}
	if c.AllowRemote || c.TLSEnabled() {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; plaintext listeners stay on loopback: serve TLS (--tls-cert, --tls-key) or set --allow-remote", addr)
	}
	return nil
}

// ReplicaName returns ReplicaID or, when empty, the host name.
func (c *Config) ReplicaName() string {
	if c.ReplicaID != "" {
		return c.ReplicaID
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "gateway"
	}
	return h
}

// MarkdownTable renders Settings as the README's configuration table.
func MarkdownTable() string {
	var b strings.Builder
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	for _, s := range Settings() {
		def := s.Default
		if def == "" {
			def = "(empty)"
		}
		fmt.Fprintf(&b, "| `--%s` | `%s` | `%s` | %s |\n", s.Flag, s.Env, def, strings.ReplaceAll(s.Help, "|", "\\|"))
	}
	return b.String()
}

// commaList splits a comma-separated setting, dropping empty items and the
// space around each.
func commaList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
