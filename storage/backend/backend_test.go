package backend_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/backend"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/sqlite"
)

var quiet = backend.Options{Logger: slog.New(slog.DiscardHandler)}

func open(t *testing.T, store, counters string) storage.Store {
	t.Helper()
	s, err := backend.Open(t.Context(), store, counters, quiet)
	if err != nil {
		t.Fatalf("Open(%q, %q): %v", store, counters, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestOpenMemory(t *testing.T) {
	for _, u := range []string{"memory:", "memory://"} {
		s := open(t, u, "")
		if _, ok := s.(*memory.Store); !ok {
			t.Fatalf("Open(%s) = %T", u, s)
		}
	}
}

func TestOpenSQLitePaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	cases := map[string]string{
		"sqlite:./data/aa.db": filepath.Join(dir, "data", "aa.db"),
		"sqlite:rel.db":       filepath.Join(dir, "rel.db"),
		"sqlite:///" + filepath.Join(dir, "abs2.db")[1:]:             filepath.Join(dir, "abs2.db"),
		"sqlite:" + filepath.Join(dir, "abs3.db") + "?durability=os": filepath.Join(dir, "abs3.db"),
		"sqlite:./sp%20ace.db":                                       filepath.Join(dir, "sp ace.db"),
	}
	for raw, want := range cases {
		s := open(t, raw, "")
		if _, ok := s.(*sqlite.Store); !ok {
			t.Fatalf("Open(%s) = %T", raw, s)
		}
		if _, err := os.Stat(want); err != nil {
			t.Fatalf("Open(%s) did not create %s: %v", raw, want, err)
		}
	}
}

// TestOpenSQLiteFlush: the flush parameter sets os durability's flush
// interval, whose window (twice it) the store reports.
func TestOpenSQLiteFlush(t *testing.T) {
	dir := t.TempDir()
	for raw, want := range map[string]time.Duration{
		"sqlite:" + filepath.Join(dir, "a.db") + "?durability=os&flush=5ms": 10 * time.Millisecond,
		"sqlite:" + filepath.Join(dir, "b.db") + "?durability=os":           2 * sqlite.DefaultFlushInterval,
		"sqlite:" + filepath.Join(dir, "c.db") + "?flush=5ms":               0, // sync: every record is on disk before its answer
	} {
		var logs bytes.Buffer
		s, err := backend.Open(t.Context(), raw, "", backend.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatalf("Open(%s): %v", raw, err)
		}
		t.Cleanup(func() { s.Close() })
		if got := s.(*sqlite.Store).FlushWindow(); got != want {
			t.Errorf("Open(%s): flush window %v, want %v", raw, got, want)
		}
		// flush= with sync durability is accepted, and the log says it does nothing.
		warned := strings.Contains(logs.String(), "flush= has no effect")
		if wantWarning := want == 0; warned != wantWarning {
			t.Errorf("Open(%s): warned %v, want %v:\n%s", raw, warned, wantWarning, logs.String())
		}
	}
}

func TestOpenErrors(t *testing.T) {
	cases := []struct{ store, counters, want string }{
		{"", "", "--store is empty; supported: memory, postgres, postgresql, sqlite"},
		{"ftp://host/x", "", `unsupported scheme "ftp"; supported: memory, postgres, postgresql, sqlite`},
		{"./data/aa.db", "", "no scheme; write it as scheme:..."},
		{"sqlite:", "", "sqlite URL has no path; write e.g. sqlite:./data/aa.db"},
		{"sqlite://host/x.db", "", `sqlite URL has a host "host"`},
		{"sqlite:./x.db?journal=wal", "", `sqlite URL parameter "journal" is unknown; known: durability=sync|os, shm=DIR|off, flush=DURATION`},
		{"sqlite:./x.db?durability=fast", "", `durability "fast": want "sync" or "os"`},
		{"sqlite:./x.db?flush=0s", "", `sqlite URL parameter flush="0s": want a positive duration up to 1s`},
		{"sqlite:./x.db?flush=2s", "", `sqlite URL parameter flush="2s": want a positive duration up to 1s`},
		{"sqlite:./x.db?flush=soon", "", `sqlite URL parameter flush="soon"`},
		{"memory:foo", "", "memory takes no path or parameters"},
		{"memory:", "kafka://x", `--counters kafka://x: unsupported scheme "kafka"; supported: memory, redis, rediss`},
		{"postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=1", "", "open store postgres://u:xxxxx@127.0.0.1:1/db"},
		{"memory:", "redis://:hunter2@127.0.0.1:1/0", "open counters redis://:xxxxx@127.0.0.1:1/0"},
		{"postgres://%zz", "", "cannot parse the URL"},
	}
	t.Chdir(t.TempDir())
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		s, err := backend.Open(ctx, c.store, c.counters, quiet)
		cancel()
		if err == nil {
			s.Close()
			t.Fatalf("Open(%q, %q) succeeded", c.store, c.counters)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q, %q) = %q\nwant it to contain %q", c.store, c.counters, err, c.want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q, %q) error repeats the password: %v", c.store, c.counters, err)
		}
	}
}

func TestCountersComposed(t *testing.T) {
	s := open(t, "memory:", "memory:")
	ctx := t.Context()
	r, err := s.Reserve(ctx, "k", 5, 10, time.Now().Add(time.Hour))
	if err != nil || !r.Allowed {
		t.Fatalf("Reserve = %+v, %v", r, err)
	}
	if _, ok := s.(*memory.Store); ok {
		t.Fatal("--counters was ignored")
	}
}

type fakeCounters struct {
	*memory.Counters
	*memory.Notifier
	closed bool
}

func (f *fakeCounters) Close() error { f.closed = true; return f.Notifier.Close() }

func TestRegisterCounters(t *testing.T) {
	var got *fakeCounters
	backend.RegisterCounters("fake", func(ctx context.Context, raw string, u *url.URL, opts backend.Options) (storage.Counters, error) {
		if u.Host != "counters.example" {
			return nil, errors.New("bad host")
		}
		got = &fakeCounters{Counters: memory.NewCounters(nil), Notifier: memory.NewNotifier()}
		return got, nil
	})
	s, err := backend.Open(t.Context(), "memory:", "fake://counters.example", quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := got.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(ctx, "t", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("a counters backend that is also a Notifier does not carry notifications")
	}
	if err := s.Close(); err != nil || !got.closed {
		t.Fatalf("Close = %v, counters closed = %v", err, got.closed)
	}
	if !strings.Contains(strings.Join(backend.CounterSchemes(), ","), "fake") {
		t.Fatal("registered scheme not listed")
	}
}
