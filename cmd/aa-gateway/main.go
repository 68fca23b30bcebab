// Command aa-gateway runs one gateway replica: PolicyService over gRPC and
// REST, health, metrics, and the durable audit log. See the README's
// configuration table, or run aa-gateway -help.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	_ "time/tzdata" // policy schedules and budgets name time zones; do not depend on the host's zoneinfo

	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// defaultGCPercent is the garbage collector's target (GOGC) when the
// environment sets none. A check allocates about 18 KB that is garbage at
// once, against a live heap of 15–20 MB, so at Go's default of 100 the
// collector ran about 12 times a second per 1,000 checks/s and took a third
// of the CPU of a loaded gateway. At 400 it runs a quarter as often:
// measured with scripts/bench-ratio.sh checkaction, CPU per check fell from
// 66 to 48.5 µs with the audit log off and from 93 to 78 µs with SQLite in
// os mode, for about 30 MB more resident memory (docs/performance.md). GOGC and
// GOMEMLIMIT in the environment are honoured as usual.
const defaultGCPercent = 400

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("aa-gateway", flag.ContinueOnError)
	cfg := server.DefaultConfig()
	envErr := server.Bind(fs, &cfg, os.Getenv)
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: aa-gateway [flags]\n\nRuns the agent-assembly gateway. Every flag can also be set by its environment variable.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *version {
		fmt.Println("aa-gateway", server.Version)
		return 0
	}
	if envErr != nil {
		fmt.Fprintf(os.Stderr, "aa-gateway: bad environment variable:\n%v\n", envErr)
		return 2
	}
	log := newLogger(cfg.LogLevel, cfg.LogFormat)
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "aa-gateway: invalid configuration:\n%v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			srv.Reloader().Trigger()
		}
	}()
	grpcL, err := server.Listen(cfg.GRPCAddr)
	if err != nil {
		srv.Close()
		log.Error("cannot start", "err", err)
		return 1
	}
	var apiL net.Listener
	if cfg.APIAddr != "" {
		if apiL, err = server.Listen(cfg.APIAddr); err != nil {
			grpcL.Close()
			srv.Close()
			log.Error("cannot start", "err", err)
			return 1
		}
	}
	if err := srv.Serve(ctx, grpcL, apiL); err != nil {
		log.Error("stopped with errors", "err", err)
		return 1
	}
	return 0
}

func newLogger(level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
