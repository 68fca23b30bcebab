package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/agent-assembly/agent-assembly/policy"
)

// Reloader loads policy documents from a file or directory, compiles them
// and swaps the snapshot into a Core. It reloads on file changes (fsnotify,
// with a polling fallback) and on Trigger (SIGHUP). An invalid version is
// rejected with the precise error in the log and the old one keeps serving.
type Reloader struct {
	path     string
	core     *Core
	log      *slog.Logger
	metrics  *Metrics
	interval time.Duration
	trigger  chan struct{}
	// OnApply, when set, is called after a new version starts serving.
	OnApply func(docs []*policy.Document, snap *policy.Snapshot)

	mu      sync.Mutex
	current string
	lastErr error
}

// NewReloader returns a Reloader for path. interval is the polling fallback
// period (0 disables polling).
func NewReloader(path string, core *Core, log *slog.Logger, interval time.Duration) *Reloader {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reloader{path: path, core: core, log: log, metrics: core.metrics, interval: interval, trigger: make(chan struct{}, 1)}
}

// Load reads, validates and compiles the documents and, when they differ from
// the serving version, swaps them in. It returns the error that rejected them.
func (r *Reloader) Load() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	docs, err := policy.LoadPath(r.path)
	if err == nil && len(docs) == 0 {
		err = fmt.Errorf("load policy %s: no policy documents (*.yaml, *.yml) found", r.path)
	}
	if err != nil {
		return r.rejected(err)
	}
	version := policy.Version(docs)
	if version == r.current {
		r.metrics.PolicyReloads.WithLabelValues("unchanged").Inc()
		r.lastErr = nil
		return nil
	}
	snap, err := policy.Compile(docs, version)
	if err != nil {
		return r.rejected(fmt.Errorf("compile policy %s: %w", r.path, err))
	}
	if err := ValidateScanPatterns(snap); err != nil {
		return r.rejected(err)
	}
	for _, w := range snap.Warnings() {
		r.log.Warn("policy warning", "version", version, "warning", w.Error())
	}
	r.core.SetSnapshot(snap)
	prev := r.current
	r.current, r.lastErr = version, nil
	r.metrics.PolicyReloads.WithLabelValues("applied").Inc()
	r.log.Info("policy applied", "version", version, "previous", prev, "documents", len(docs), "path", r.path)
	if r.OnApply != nil {
		r.OnApply(docs, snap)
	}
	return nil
}

// rejected records a failed load. The same error is logged once, not at
// every poll, until the files change.
func (r *Reloader) rejected(err error) error {
	r.metrics.PolicyReloads.WithLabelValues("rejected").Inc()
	repeat := r.lastErr != nil && r.lastErr.Error() == err.Error()
	r.lastErr = err
	if r.current != "" && !repeat {
		r.log.Error("policy rejected; the previous version keeps serving", "serving", r.current, "err", err)
	}
	return err
}

// LastError returns the error of the last load, nil when it succeeded.
func (r *Reloader) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Trigger asks Run to reload now (used for SIGHUP).
func (r *Reloader) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run watches the policy path until ctx ends. File events are debounced so an
// editor's write-rename-chmod sequence causes one reload.
func (r *Reloader) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.log.Warn("file watching unavailable, polling only", "err", err)
	} else {
		defer w.Close()
		dir := r.path
		if st, serr := os.Stat(r.path); serr == nil && !st.IsDir() {
			dir = filepath.Dir(r.path)
		}
		if werr := w.Add(dir); werr != nil {
			r.log.Warn("cannot watch policy path, polling only", "path", dir, "err", werr)
		} else {
			events = w.Events
		}
	}
	var tick <-chan time.Time
	if r.interval > 0 {
		t := time.NewTicker(r.interval)
		defer t.Stop()
		tick = t.C
	}
	var debounce *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !relevant(ev.Name) {
				continue
			}
			if debounce == nil {
				debounce = time.NewTimer(100 * time.Millisecond)
			} else {
				debounce.Reset(100 * time.Millisecond)
			}
			fire = debounce.C
		case <-fire:
			fire = nil
			_ = r.Load()
		case <-tick:
			_ = r.Load()
		case <-r.trigger:
			r.log.Info("policy reload requested")
			_ = r.Load()
		}
	}
}

func relevant(name string) bool {
	switch filepath.Ext(name) {
	case ".yaml", ".yml":
		return true
	}
	return false
}
