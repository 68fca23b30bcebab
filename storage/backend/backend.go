// Package backend opens the storage a gateway is configured with from URLs:
// --store (memory:, sqlite:PATH, postgres://…) and --counters (redis://…),
// composing them into one storage.Store.
//
// The memory, sqlite, postgres and redis drivers are built in. Another
// driver plugs in with RegisterStore or RegisterCounters, from its own
// package or from main, before Open is called.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/postgres"
	"github.com/agent-assembly/agent-assembly/storage/redis"
	"github.com/agent-assembly/agent-assembly/storage/sqlite"
)

// DefaultStoreURL is the gateway's default --store.
const DefaultStoreURL = "sqlite:" + sqlite.DefaultPath

// Options are passed to every driver.
type Options struct {
	// Durability of audit appends: storage.DurabilitySync (default) or
	// storage.DurabilityOS. A sqlite URL may override it (?durability=os).
	Durability storage.Durability
	// Sealer encrypts secrets; without it, drivers refuse to store secrets.
	Sealer storage.Sealer
	// Logger is handed to the drivers (slog.Default when nil).
	Logger *slog.Logger
}

// StoreOpener opens a full store from its URL (the raw string, as the user
// wrote it, and parsed).
type StoreOpener func(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Store, error)

// CountersOpener opens a --counters backend. When the value it returns also
// implements storage.Notifier, notifications and approval wake-ups go through
// it too; when it has Close() error, closing the store closes it.
type CountersOpener func(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Counters, error)

var registry = struct {
	sync.RWMutex
	stores   map[string]StoreOpener
	counters map[string]CountersOpener
}{
	stores: map[string]StoreOpener{
		"memory":     openMemory,
		"sqlite":     openSQLite,
		"postgres":   openPostgres,
		"postgresql": openPostgres,
	},
	counters: map[string]CountersOpener{
		"redis":  openRedis,
		"rediss": openRedis,
		"memory": openMemoryCounters,
	},
}

// RegisterStore makes scheme available to --store; a later registration of
// the same scheme replaces the earlier one.
func RegisterStore(scheme string, open StoreOpener) {
	registry.Lock()
	defer registry.Unlock()
	registry.stores[strings.ToLower(scheme)] = open
}

// RegisterCounters makes scheme available to --counters.
func RegisterCounters(scheme string, open CountersOpener) {
	registry.Lock()
	defer registry.Unlock()
	registry.counters[strings.ToLower(scheme)] = open
}

// StoreSchemes lists the schemes --store accepts, sorted.
func StoreSchemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(registry.stores))
}

// CounterSchemes lists the schemes --counters accepts, sorted.
func CounterSchemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(registry.counters))
}

// Open opens the store named by storeURL and, when countersURL is not
// empty, takes counters (and, if that backend provides them,
// notifications and approval wake-ups) from it instead.
func Open(ctx context.Context, storeURL, countersURL string, opts Options) (storage.Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	u, err := parse("--store", storeURL, StoreSchemes())
	if err != nil {
		return nil, err
	}
	registry.RLock()
	openStore := registry.stores[u.Scheme]
	registry.RUnlock()
	base, err := openStore(ctx, storeURL, u, opts)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", redact(storeURL, u), err)
	}
	if countersURL == "" {
		return base, nil
	}
	cu, err := parse("--counters", countersURL, CounterSchemes())
	if err != nil {
		base.Close()
		return nil, err
	}
	registry.RLock()
	openCounters := registry.counters[cu.Scheme]
	registry.RUnlock()
	counters, err := openCounters(ctx, countersURL, cu, opts)
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("open counters %s: %w", redact(countersURL, cu), err)
	}
	notifier, _ := counters.(storage.Notifier)
	return storage.Compose(base, counters, notifier), nil
}

// parse checks that raw is a URL with a supported scheme. Its errors never
// repeat a password.
func parse(flag, raw string, schemes []string) (*url.URL, error) {
	supported := "supported: " + strings.Join(schemes, ", ")
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("%s is empty; %s", flag, supported)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s: cannot parse the URL (%v); check quoting and %%-escapes", flag, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%s %q: no scheme; write it as scheme:..., %s", flag, redact(raw, u), supported)
	}
	if !slices.Contains(schemes, u.Scheme) {
		return nil, fmt.Errorf("%s %s: unsupported scheme %q; %s", flag, redact(raw, u), u.Scheme, supported)
	}
	return u, nil
}

func redact(raw string, u *url.URL) string {
	if u != nil && u.User != nil {
		return u.Redacted()
	}
	return raw
}

// ---------------------------------------------------------------- built in

func openMemory(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Store, error) {
	if u.Opaque != "" || u.Host != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("memory takes no path or parameters: write memory: %w", storage.ErrInvalid)
	}
	return memory.New(memory.Options{Sealer: opts.Sealer}), nil
}

func openMemoryCounters(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Counters, error) {
	if u.Opaque != "" || u.Host != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("memory takes no path or parameters: write memory: %w", storage.ErrInvalid)
	}
	return memory.NewCounters(nil), nil
}

// SQLitePath returns the file a sqlite: URL names: sqlite:./data/aa.db and
// sqlite:data/aa.db are relative to the working directory, sqlite:///abs/path
// and sqlite:/abs/path absolute.
func SQLitePath(u *url.URL) (string, error) {
	switch {
	case u.Host != "":
		return "", fmt.Errorf("sqlite URL has a host %q; write sqlite:./relative/path or sqlite:///absolute/path: %w", u.Host, storage.ErrInvalid)
	case u.Opaque != "":
		p, err := url.PathUnescape(u.Opaque)
		if err != nil {
			return "", fmt.Errorf("sqlite path: %w: %w", storage.ErrInvalid, err)
		}
		return p, nil
	case u.Path != "":
		return u.Path, nil
	}
	return "", fmt.Errorf("sqlite URL has no path; write e.g. %s: %w", DefaultStoreURL, storage.ErrInvalid)
}

func openSQLite(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Store, error) {
	path, err := SQLitePath(u)
	if err != nil {
		return nil, err
	}
	so := sqlite.Options{Path: path, Durability: opts.Durability, Sealer: opts.Sealer, Logger: opts.Logger}
	for k, v := range u.Query() {
		switch k {
		case "durability":
			so.Durability = storage.Durability(v[len(v)-1])
		case "shm":
			so.SharedMemoryDir = v[len(v)-1]
		case "flush":
			d, err := time.ParseDuration(v[len(v)-1])
			if err != nil || d <= 0 || d > sqlite.MaxFlushInterval {
				return nil, fmt.Errorf("sqlite URL parameter flush=%q: want a positive duration up to %v, e.g. flush=25ms: %w", v[len(v)-1], sqlite.MaxFlushInterval, storage.ErrInvalid)
			}
			so.FlushInterval = d
		default:
			return nil, fmt.Errorf("sqlite URL parameter %q is unknown; known: durability=sync|os, shm=DIR|off, flush=DURATION: %w", k, storage.ErrInvalid)
		}
	}
	if so.FlushInterval != 0 && (so.Durability == storage.DurabilitySync || so.Durability == "") {
		// Any other durability is refused by sqlite.Open, naming it.
		opts.Logger.Warn("the SQLite URL's flush= has no effect: it paces os durability's flushes, and with sync durability every audit record is on disk before its answer",
			"flush", so.FlushInterval)
	}
	return sqlite.Open(ctx, so)
}

func openPostgres(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Store, error) {
	return postgres.Open(ctx, raw, postgres.Options{Durability: opts.Durability, Sealer: opts.Sealer, Logger: opts.Logger})
}

func openRedis(ctx context.Context, raw string, u *url.URL, opts Options) (storage.Counters, error) {
	return redis.Open(ctx, raw, redis.Options{Logger: opts.Logger})
}
