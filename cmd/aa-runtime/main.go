// Command aa-runtime is the per-host agent runtime. "aa-runtime serve" serves
// agents on their Unix sockets; "aa-runtime exec --agent ID -- CMD..." starts
// one agent in its own cgroup v2 with a runtime serving it, and exits with
// the agent's exit status. Run aa-runtime <command> -help for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agent-assembly/agent-assembly/runtime"
)

// Version is set at build time.
var Version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func usage() {
	fmt.Fprint(os.Stderr, `Usage:
  aa-runtime serve --gateway HOST:PORT --agent org/team/agent[,uid=N][,socket=PATH][,token=T] ...
  aa-runtime exec  --gateway HOST:PORT --agent org/team/agent [flags] -- CMD [ARGS...]
  aa-runtime token --gateway HOST:PORT --agent org/team/agent [--key FILE]   (register; print the credential token)
  aa-runtime version
`)
}

func run(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:])
	case "exec":
		return execCmd(args[1:])
	case "token":
		return tokenCmd(args[1:], os.Stdout)
	case "version", "-version", "--version":
		fmt.Println("aa-runtime", Version)
		return 0
	case "-h", "-help", "--help", "help":
		usage()
		return 0
	}
	fmt.Fprintf(os.Stderr, "aa-runtime: unknown command %q\n", args[0])
	usage()
	return 2
}

// common holds the flags both commands take.
type common struct {
	gateway, buffer, failMode, logLevel, socketDir string
	checkTimeout, cacheTTL                         time.Duration
	register                                       bool
}

func (c *common) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.gateway, "gateway", envOr("AA_GATEWAY_ADDR", "127.0.0.1:50051"), "gateway gRPC address, or several replicas comma-separated (host:port,host:port): checks are spread over them and one in flight when its replica dies is retried on another ($AA_GATEWAY_ADDR)")
	fs.StringVar(&c.buffer, "buffer", envOr("AA_RUNTIME_BUFFER", "/var/lib/agent-assembly/runtime/events.db"), "SQLite file of the durable audit event buffer ($AA_RUNTIME_BUFFER)")
	fs.StringVar(&c.socketDir, "socket-dir", envOr("AA_RUNTIME_SOCKET_DIR", "/run/agent-assembly"), "directory for agent sockets without socket= ($AA_RUNTIME_SOCKET_DIR)")
	fs.StringVar(&c.failMode, "fail-mode", string(runtime.FailClosed), `what checks answer while the gateway is unreachable: "closed", or "observe-open" to allow agents whose policy is observe-only`)
	fs.DurationVar(&c.checkTimeout, "check-timeout", 400*time.Millisecond, "bound on one gateway check")
	fs.DurationVar(&c.cacheTTL, "cache-ttl", 60*time.Second, "longest life of a cached decision (negative disables the cache)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&c.register, "register", true, "register agents without token= with the gateway (Ed25519 key kept next to --buffer), heartbeat and follow their control stream")
}

func (c *common) options(agents []runtime.Agent, log *slog.Logger) runtime.Options {
	return runtime.Options{
		Agents: agents, Gateway: c.gateway, BufferPath: c.buffer, Logger: log,
		CheckTimeout: c.checkTimeout, CacheTTL: c.cacheTTL, FailMode: runtime.FailMode(c.failMode), Version: Version,
		Register: c.register,
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: must be debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// agentFlags collects repeated --agent flags.
type agentFlags []string

func (a *agentFlags) String() string     { return strings.Join(*a, " ") }
func (a *agentFlags) Set(v string) error { *a = append(*a, v); return nil }

// parseAgent reads "org/team/agent[,uid=N][,socket=PATH][,token=T]".
func parseAgent(spec, socketDir string) (runtime.Agent, error) {
	parts := strings.Split(spec, ",")
	id, err := runtime.ParseAgentID(parts[0])
	if err != nil {
		return runtime.Agent{}, err
	}
	if abs, err := filepath.Abs(socketDir); err == nil {
		socketDir = abs // agents get the socket path in their environment, whatever their directory
	}
	a := runtime.Agent{ID: id, UID: os.Getuid(), Token: os.Getenv("AA_CREDENTIAL_TOKEN"),
		Socket: filepath.Join(socketDir, id.Org+"."+id.Team+"."+id.Agent+".sock")}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return a, fmt.Errorf("agent %s: %q is not key=value (uid, socket or token)", parts[0], p)
		}
		switch k {
		case "uid":
			if _, err := fmt.Sscan(v, &a.UID); err != nil || a.UID < 0 {
				return a, fmt.Errorf("agent %s: uid %q is not a user id", parts[0], v)
			}
		case "socket":
			if abs, err := filepath.Abs(v); err == nil {
				v = abs
			}
			a.Socket = v
		case "token":
			a.Token = v
		default:
			return a, fmt.Errorf("agent %s: unknown setting %q (uid, socket or token)", parts[0], k)
		}
	}
	return a, nil
}

func serve(args []string) int {
	fs := flag.NewFlagSet("aa-runtime serve", flag.ContinueOnError)
	var c common
	c.bind(fs)
	var agents agentFlags
	fs.Var(&agents, "agent", "agent to serve: org/team/agent[,uid=N][,socket=PATH][,token=T] (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := newLogger(c.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime:", err)
		return 2
	}
	var list []runtime.Agent
	for _, s := range agents {
		a, err := parseAgent(s, c.socketDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "aa-runtime serve:", err)
			return 2
		}
		list = append(list, a)
	}
	if err := os.MkdirAll(c.socketDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime serve:", err)
		return 1
	}
	rt, err := runtime.New(c.options(list, log))
	if err != nil {
		fmt.Fprintln(os.Stderr, "aa-runtime serve:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rt.Run(ctx); err != nil {
		log.Error("runtime failed", "err", err)
		return 1
	}
	return 0
}
