package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agent-assembly/agent-assembly/storage"
)

func TestMessageEncoding(t *testing.T) {
	cases := []struct {
		topic   string
		payload []byte
	}{
		{"policy", []byte("v7")},
		{"approvals", nil},
		{"a:b:c", []byte("x:y")},
		{"bin", []byte{0, 1, 0xff}},
		{"nul\x00topic", []byte("p")},
		{"ünï", []byte("cödé")},
	}
	for _, c := range cases {
		enc := encodeMessage(c.topic, c.payload)
		if enc[0] != 'n' {
			t.Fatalf("encodeMessage(%q) = %q: missing kind byte", c.topic, enc)
		}
		if strings.ContainsRune(enc, 0) {
			t.Fatalf("encodeMessage(%q, %q) contains NUL, which NOTIFY refuses", c.topic, c.payload)
		}
		topic, payload, ok := decodeMessage(enc[1:])
		if !ok || topic != c.topic || !bytes.Equal(payload, c.payload) {
			t.Fatalf("round trip of (%q, %q) = (%q, %q, %v)", c.topic, c.payload, topic, payload, ok)
		}
	}
	for _, bad := range []string{"", "r", "rx:abc", "r9:ab", "bnot base64", "b!!:!!", "z"} {
		if _, _, ok := decodeMessage(bad); ok {
			t.Errorf("decodeMessage(%q) accepted garbage", bad)
		}
	}
}

func TestAuditNotice(t *testing.T) {
	chain, from, to, ok := parseAuditNotice(auditNotice("gw:1", 5, 9)[1:])
	if !ok || chain != "gw:1" || from != 5 || to != 9 {
		t.Fatalf("parseAuditNotice = %q %d %d %v", chain, from, to, ok)
	}
	for _, bad := range []string{"", "5", "5:x:c", "x:5:c"} {
		if _, _, _, ok := parseAuditNotice(bad); ok {
			t.Errorf("parseAuditNotice(%q) accepted garbage", bad)
		}
	}
}

func TestChannelName(t *testing.T) {
	if got := channelName(""); got != "agent_assembly" {
		t.Errorf("channelName(\"\") = %q", got)
	}
	long := strings.Repeat("s", 100)
	a, b := channelName(long), channelName(long+"x")
	if len(a) > 63 || a == b {
		t.Errorf("long schema names give %q and %q: want distinct names of at most 63 bytes", a, b)
	}
}

func TestMigrationFiles(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if m.version != i+1 {
			t.Fatalf("migration %s has version %d, want %d: versions are consecutive from 1", m.name, m.version, i+1)
		}
	}
	if SchemaVersion() != len(ms) {
		t.Fatalf("SchemaVersion() = %d, want %d", SchemaVersion(), len(ms))
	}
}

// TestPoolConfig checks that the driver's URL parameters reach the options
// and never pgx, and that the pool gets the driver's tuning unless the URL
// sets pgxpool's own parameters.
func TestPoolConfig(t *testing.T) {
	opts := Options{MaxConns: 7}
	opts.setDefaults()
	cfg, err := poolConfig(`postgres://u:p@h1:5432,h2:5433/db?sslmode=disable&schema=My"Schema&durability=os&pool_max_conns=3&application_name=x`, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Schema != `My"Schema` || opts.Durability != storage.DurabilityOS || opts.MaxConns != 3 {
		t.Fatalf("options from the URL: schema %q durability %q max conns %d", opts.Schema, opts.Durability, opts.MaxConns)
	}
	rp := cfg.ConnConfig.RuntimeParams
	for _, k := range []string{"schema", "durability", "pool_max_conns"} {
		if v, ok := rp[k]; ok {
			t.Errorf("driver parameter %s=%q reached pgx's runtime parameters", k, v)
		}
	}
	if got, want := rp["search_path"], `"My""Schema"`; got != want {
		t.Errorf("search_path = %s, want %s", got, want)
	}
	if rp["application_name"] != "x" {
		t.Errorf("application_name = %q, want the URL's", rp["application_name"])
	}
	if cfg.MaxConns != 3 || cfg.MaxConnIdleTime != maxConnIdleTime || cfg.HealthCheckPeriod != healthCheckPeriod || cfg.PingTimeout != opts.ConnectTimeout {
		t.Errorf("pool max %d, idle %v, health check %v, ping timeout %v", cfg.MaxConns, cfg.MaxConnIdleTime, cfg.HealthCheckPeriod, cfg.PingTimeout)
	}
	if cfg.ConnConfig.ConnectTimeout != opts.ConnectTimeout || len(cfg.ConnConfig.Fallbacks) != 1 {
		t.Errorf("connect timeout %v, %d fallback hosts; want %v and 1", cfg.ConnConfig.ConnectTimeout, len(cfg.ConnConfig.Fallbacks), opts.ConnectTimeout)
	}

	opts = Options{}
	opts.setDefaults()
	cfg, err = poolConfig("postgresql://h/db?connect_timeout=9&pool_max_conn_idle_time=1m&pool_health_check_period=2s&pool_ping_timeout=3s", &opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 16 || cfg.MaxConnIdleTime != time.Minute || cfg.HealthCheckPeriod != 2*time.Second || cfg.PingTimeout != 3*time.Second || cfg.ConnConfig.ConnectTimeout != 9*time.Second {
		t.Errorf("the URL's pool settings not kept: max %d, idle %v, health check %v, ping timeout %v, connect timeout %v",
			cfg.MaxConns, cfg.MaxConnIdleTime, cfg.HealthCheckPeriod, cfg.PingTimeout, cfg.ConnConfig.ConnectTimeout)
	}

	for _, bad := range []string{"postgres://h/db?pool_max_conns=0", "postgres://h/db?pool_max_conns=x", "postgres://h/db?pool_max_conns=4294967296",
		"postgres://h/db?durability=eventually", "postgres://h/db?a=%zz", "postgres://%zz"} {
		opts := Options{}
		opts.setDefaults()
		if _, err := poolConfig(bad, &opts); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("poolConfig(%s) = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestErrorClassification: errors of the connection (refused, reset,
// broken pipe, a failed connect, no connection before the deadline) match
// storage.ErrUnavailable and name the server; errors of a statement do not.
func TestErrorClassification(t *testing.T) {
	s := &Store{addr: "db.test:5432"}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.cancel()
	ctx := t.Context()
	sysErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	_, connectErr := pgconn.Connect(ctx, "postgres://u@127.0.0.1:1/x?connect_timeout=2")
	var ce *pgconn.ConnectError
	if !errors.As(connectErr, &ce) {
		t.Fatalf("connect to a closed port = %v, want a pgconn.ConnectError", connectErr)
	}
	expired, cancel := context.WithDeadline(ctx, time.Now())
	defer cancel()
	canceled, cancel := context.WithCancel(ctx)
	cancel()

	cases := []struct {
		name        string
		ctx         context.Context
		acquire     bool
		err         error
		unavailable bool
		is          error
	}{
		{"connect refused", ctx, true, connectErr, true, nil},
		{"dial refused", ctx, false, sysErr("dial", syscall.ECONNREFUSED), true, nil},
		{"reset", ctx, false, sysErr("read", syscall.ECONNRESET), true, nil},
		{"broken pipe", ctx, false, sysErr("write", syscall.EPIPE), true, nil},
		{"closed by the server", ctx, false, fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), true, nil},
		{"admin shutdown", ctx, false, &pgconn.PgError{Code: "57P01", Message: "terminating connection"}, true, nil},
		{"too many connections", ctx, true, &pgconn.PgError{Code: "53300", Message: "too many clients"}, true, nil},
		{"no connection before the deadline", expired, true, context.DeadlineExceeded, true, context.DeadlineExceeded},
		{"caller gave up acquiring", canceled, true, context.Canceled, false, context.Canceled},
		{"statement deadline", expired, false, context.DeadlineExceeded, false, context.DeadlineExceeded},
		{"unique violation", ctx, false, &pgconn.PgError{Code: "23505", Message: "duplicate key"}, false, storage.ErrConflict},
		{"undefined table", ctx, false, &pgconn.PgError{Code: "42P01", Message: "no such table"}, false, nil},
		{"no rows", ctx, false, pgx.ErrNoRows, false, storage.ErrNotFound},
	}
	for _, c := range cases {
		var err error
		if c.acquire {
			err = s.acquireFailed(c.ctx, "op", c.err)
		} else {
			err = s.fail(c.ctx, "op", c.err, false)
		}
		if got := errors.Is(err, storage.ErrUnavailable); got != c.unavailable {
			t.Errorf("%s: %v matches ErrUnavailable: %v, want %v", c.name, err, got, c.unavailable)
		}
		if c.unavailable && !strings.Contains(err.Error(), "postgres db.test:5432 unavailable") {
			t.Errorf("%s: %q does not name the server", c.name, err)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v does not match %v", c.name, err, c.is)
		}
	}

	s.cancel() // Close: the pool is closed
	if err := s.acquireFailed(ctx, "op", errors.New("closed pool")); !errors.Is(err, storage.ErrClosed) || errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("acquire from the closed pool of a closed store = %v, want ErrClosed", err)
	}
}
