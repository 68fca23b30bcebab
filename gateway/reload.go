package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// PolicyVersions is what the Reloader needs from the store to make the
// stored active version the policy every replica serves.
type PolicyVersions interface {
	storage.PolicyStore
	storage.Notifier
}

// storeTimeout bounds each store call the Reloader makes.
const storeTimeout = 5 * time.Second

// Reloader keeps the Core serving the current policy version.
//
// Without a store it loads documents from a file or directory, compiles them
// and swaps the snapshot in, on file changes (fsnotify, with a polling
// fallback) and on Trigger (SIGHUP).
//
// With a store (UseStore) the store's active version is the source of truth
// shared by every replica: changed files are saved as a new version (author
// "file:<path>") and activated; ApplyPolicy and RollbackPolicy activate
// versions through Activate and Rollback; every replica follows activations
// through storage.TopicPolicy and, as a fallback, at every poll. See
// docs/policy-lifecycle.md for the rules.
//
// In both modes an invalid version is rejected with the precise error and the
// version in memory keeps serving.
type Reloader struct {
	path     string
	core     *Core
	log      *slog.Logger
	metrics  *Metrics
	interval time.Duration
	trigger  chan struct{}
	store    PolicyVersions
	now      func() time.Time
	// OnApply, when set, is called after a new version starts serving on
	// this replica, whatever activated it (files, API, another replica).
	OnApply func(docs []*policy.Document, snap *policy.Snapshot)
	// OnActivate, when set, is called on the replica that activated a
	// version in the store, after it was published (a hook to fan the
	// change out further, e.g. to runtimes' invalidation log).
	OnActivate func(ctx context.Context, v *storage.PolicyVersion)

	mu          sync.Mutex
	current     string
	fileVersion string
	lastErr     error
	// parsed is the digest of the sources Load parsed last and the
	// version they parsed to: a poll that reads the same bytes skips
	// parsing them again when that version is the one it would keep.
	parsed struct {
		digest  [sha256.Size]byte
		version string
	}
	parses int // how many times Load parsed files (read by tests)
}

// NewReloader returns a Reloader for path. interval is the polling fallback
// period (0 disables polling).
func NewReloader(path string, core *Core, log *slog.Logger, interval time.Duration) *Reloader {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reloader{path: path, core: core, log: log, metrics: core.metrics, interval: interval, trigger: make(chan struct{}, 1), now: time.Now}
}

// UseStore makes the store's active version the source of truth. Call it
// before the first Load.
func (r *Reloader) UseStore(st PolicyVersions) { r.store = st }

// HasStore reports whether versions are kept in a store.
func (r *Reloader) HasStore() bool { return r.store != nil }

// Store returns the policy version store (nil without one).
func (r *Reloader) Store() PolicyVersions { return r.store }

// FileAuthor is the author recorded for versions saved from the policy path.
func (r *Reloader) FileAuthor() string { return "file:" + r.path }

// Current returns the version serving on this replica ("" before the first).
func (r *Reloader) Current() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// Load reads, validates and compiles the policy files. Without a store, it
// swaps them in when they differ from the serving version. With a store, it
// saves and activates them when they changed since this replica last read
// them; at the first Load, only when their version is new to the store
// (otherwise the store's active version is loaded: the files only win when
// they change). It returns the error that rejected them.
func (r *Reloader) Load() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	srcs, err := readPolicyFiles(r.path)
	if err != nil {
		return r.rejected(err)
	}
	// Parsing is most of a poll's cost (about 30 ms of CPU every poll for
	// a 1,000-rule policy): files whose bytes have not changed since they
	// parsed to the version being kept are not parsed again.
	digest := sourcesDigest(srcs)
	if r.parsed.version != "" && digest == r.parsed.digest && r.kept(r.parsed.version) {
		return r.unchanged()
	}
	r.parses++
	docs, err := parseStored(srcs)
	if err != nil {
		return r.rejected(err)
	}
	version := policy.Version(docs)
	r.parsed.digest, r.parsed.version = digest, version
	if r.kept(version) {
		return r.unchanged()
	}
	snap, err := compile(docs, version)
	if err != nil {
		return r.rejected(fmt.Errorf("compile policy %s: %w", r.path, err))
	}
	if r.store == nil {
		r.install(context.Background(), docs, snap, "files "+r.path)
		r.lastErr = nil
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	first := r.fileVersion == ""
	if first {
		_, gerr := r.store.GetPolicyVersion(ctx, version)
		switch {
		case gerr == nil:
			// The files are not new: another replica or an earlier run saved
			// them, and the store's active version may be newer.
			serr := r.syncLocked(ctx)
			if serr == nil {
				r.fileVersion, r.lastErr = version, nil
				return nil
			}
			if !errors.Is(serr, storage.ErrNotFound) {
				r.log.Error("stored active policy unusable; serving the policy files", "err", serr)
			}
		case !errors.Is(gerr, storage.ErrNotFound):
			r.metrics.storeError(storeOpPolicyVersions, gerr)
			return r.rejected(fmt.Errorf("read policy version %s: %w", version, gerr))
		}
	}
	pv := &storage.PolicyVersion{Version: version, Documents: baseNames(srcs), Author: r.FileAuthor(),
		Message: "policy files changed", CreatedAt: r.now()}
	if first {
		pv.Message = "policy files loaded at start"
	}
	prev := r.current
	if err := r.activateLocked(ctx, pv, docs, snap); err != nil {
		return r.rejected(err)
	}
	r.fileVersion, r.lastErr = version, nil
	if first {
		// Activations at start are in the version history (message "policy
		// files loaded at start"); the audit log records changes made while
		// serving.
		return nil
	}
	payload, _ := json.Marshal(map[string]string{"version": version, "previous": prev, "author": pv.Author, "message": pv.Message})
	// The version is active either way; a failed record is logged by the core.
	_ = r.core.AuditGovernance(ctx, action.AgentID{}, "policy.files", fmt.Sprintf("policy version %s activated from %s (previous %s)", version, r.path, prev), payload)
	return nil
}

// Activate validates documents, stores them as a version (or reuses the
// stored version with the same content), activates it, serves it here and
// tells every replica. Invalid documents are never stored: the error is a
// policy.Errors naming file:line:column.
func (r *Reloader) Activate(ctx context.Context, srcs []storage.PolicyDocument, author, message string) (*storage.PolicyVersion, error) {
	if r.store == nil {
		return nil, fmt.Errorf("activate policy: no policy store configured: %w", storage.ErrNotSupported)
	}
	docs, err := parseStored(srcs)
	if err != nil {
		return nil, err
	}
	version := policy.Version(docs)
	snap, err := compile(docs, version)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pv := &storage.PolicyVersion{Version: version, Documents: srcs, Author: author, Message: message, CreatedAt: r.now()}
	if err := r.activateLocked(ctx, pv, docs, snap); err != nil {
		return nil, err
	}
	return r.store.GetPolicyVersion(ctx, version)
}

// Rollback activates a stored version again. A version this replica cannot
// compile is refused and nothing changes.
func (r *Reloader) Rollback(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	if r.store == nil {
		return nil, fmt.Errorf("roll back policy: no policy store configured: %w", storage.ErrNotSupported)
	}
	pv, err := r.store.GetPolicyVersion(ctx, version)
	if err != nil {
		r.metrics.storeError(storeOpPolicyVersions, err)
		return nil, fmt.Errorf("read policy version %s: %w", version, err)
	}
	docs, err := parseStored(pv.Documents)
	if err != nil {
		return nil, fmt.Errorf("stored policy version %s does not parse: %w", version, err)
	}
	snap, err := compile(docs, version)
	if err != nil {
		return nil, fmt.Errorf("stored policy version %s does not compile: %w", version, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.activateLocked(ctx, pv, docs, snap); err != nil {
		return nil, err
	}
	return r.store.GetPolicyVersion(ctx, version)
}

// activateLocked saves pv unless it exists, activates it, swaps it in and
// publishes it. r.mu is held.
func (r *Reloader) activateLocked(ctx context.Context, pv *storage.PolicyVersion, docs []*policy.Document, snap *policy.Snapshot) error {
	if err := r.store.SavePolicyVersion(ctx, pv); err != nil && !errors.Is(err, storage.ErrConflict) {
		r.metrics.storeError(storeOpPolicyVersions, err)
		return fmt.Errorf("save policy version %s: %w", pv.Version, err)
	}
	if err := r.store.ActivatePolicyVersion(ctx, pv.Version, r.now()); err != nil {
		r.metrics.storeError(storeOpPolicyVersions, err)
		return fmt.Errorf("activate policy version %s: %w", pv.Version, err)
	}
	r.install(ctx, docs, snap, pv.Author)
	if err := r.store.Publish(ctx, storage.TopicPolicy, []byte(pv.Version)); err != nil {
		// Other replicas still pick the version up at their next poll.
		r.metrics.storeError(storeOpPolicyVersions, err)
		r.log.WarnContext(ctx, "publish policy activation", "version", pv.Version, "err", err)
	}
	if r.OnActivate != nil {
		r.OnActivate(ctx, pv)
	}
	return nil
}

// Sync loads the store's active version when it differs from the serving
// one. A stored version this replica cannot compile is logged and skipped;
// the serving one stays.
func (r *Reloader) Sync(ctx context.Context) error {
	if r.store == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.syncLocked(ctx)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

func (r *Reloader) syncLocked(ctx context.Context) error {
	pv, err := r.store.ActivePolicyVersion(ctx)
	if err != nil {
		r.metrics.storeError(storeOpPolicyVersions, err)
		return fmt.Errorf("read active policy version: %w", err)
	}
	if pv.Version == r.current {
		return nil
	}
	docs, err := parseStored(pv.Documents)
	var snap *policy.Snapshot
	if err == nil {
		snap, err = compile(docs, pv.Version)
	}
	if err != nil {
		r.metrics.PolicyReloads.WithLabelValues("rejected").Inc()
		err = fmt.Errorf("active policy version %s is invalid on this replica: %w", pv.Version, err)
		if r.lastErr == nil || r.lastErr.Error() != err.Error() {
			r.log.Error("policy rejected; the previous version keeps serving", "serving", r.current, "err", err)
		}
		r.lastErr = err
		return err
	}
	r.install(ctx, docs, snap, pv.Author)
	r.lastErr = nil
	return nil
}

// install swaps snap in. r.mu is held. ctx is the call that activated it,
// for the log records.
func (r *Reloader) install(ctx context.Context, docs []*policy.Document, snap *policy.Snapshot, source string) {
	for _, w := range snap.Warnings() {
		r.log.WarnContext(ctx, "policy warning", "version", snap.Version(), "warning", w.Error())
	}
	r.core.SetSnapshot(snap)
	prev := r.current
	r.current = snap.Version()
	r.metrics.PolicyReloads.WithLabelValues("applied").Inc()
	r.log.InfoContext(ctx, "policy applied", "version", r.current, "previous", prev, "documents", len(docs), "source", source)
	if r.OnApply != nil {
		r.OnApply(docs, snap)
	}
}

// compile compiles docs and checks their scan patterns.
func compile(docs []*policy.Document, version string) (*policy.Snapshot, error) {
	snap, err := policy.Compile(docs, version)
	if err != nil {
		return nil, err
	}
	if err := ValidateScanPatterns(snap); err != nil {
		return nil, err
	}
	return snap, nil
}

// parseStored parses every document, reporting all problems together.
func parseStored(srcs []storage.PolicyDocument) ([]*policy.Document, error) {
	if len(srcs) == 0 {
		return nil, errors.New("no policy documents")
	}
	in := make([]policy.Source, len(srcs))
	for i, s := range srcs {
		in[i] = policy.Source{Name: s.Name, Data: s.Source}
	}
	return policy.ParseAll(in)
}

// readPolicyFiles reads a policy file, or every regular *.yaml and *.yml
// file directly inside a directory in lexical order, as policy.LoadPath does,
// keeping the bytes so the version can be stored as written.
func readPolicyFiles(path string) ([]storage.PolicyDocument, error) {
	files, err := policy.Files(path)
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", path, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("load policy %s: no policy documents (*.yaml, *.yml) found", path)
	}
	out := make([]storage.PolicyDocument, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("load policy %s: %w", path, err)
		}
		out = append(out, storage.PolicyDocument{Name: f, Source: b})
	}
	return out, nil
}

// baseNames returns srcs named by file name only, as they are stored.
func baseNames(srcs []storage.PolicyDocument) []storage.PolicyDocument {
	out := make([]storage.PolicyDocument, len(srcs))
	for i, s := range srcs {
		out[i] = storage.PolicyDocument{Name: filepath.Base(s.Name), Source: s.Source}
	}
	return out
}

// kept reports whether files that parse to version would change nothing:
// without a store, version serves already; with one, it is the version the
// files had when this replica last read them.
func (r *Reloader) kept(version string) bool {
	if r.store == nil {
		return version == r.current
	}
	return version == r.fileVersion
}

// unchanged records a load that changed nothing.
func (r *Reloader) unchanged() error {
	r.metrics.PolicyReloads.WithLabelValues("unchanged").Inc()
	r.lastErr = nil
	return nil
}

// sourcesDigest fingerprints policy sources: their names and bytes, each
// prefixed by its length so that no two lists share a digest.
func sourcesDigest(srcs []storage.PolicyDocument) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, s := range srcs {
		binary.BigEndian.PutUint64(n[:], uint64(len(s.Name)))
		h.Write(n[:])
		h.Write([]byte(s.Name))
		binary.BigEndian.PutUint64(n[:], uint64(len(s.Source)))
		h.Write(n[:])
		h.Write(s.Source)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
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

// Run watches the policy path, and with a store the activations of every
// replica, until ctx ends. File events are debounced so an editor's
// write-rename-chmod sequence causes one reload.
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
	activations := r.subscribe(ctx)
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
		case _, ok := <-activations:
			if !ok {
				activations = nil // resubscribed at the next tick
				continue
			}
			r.sync(ctx)
		case <-fire:
			fire = nil
			_ = r.Load()
		case <-tick:
			_ = r.Load()
			if activations == nil {
				activations = r.subscribe(ctx)
			}
			r.sync(ctx)
		case <-r.trigger:
			r.log.Info("policy reload requested")
			_ = r.Load()
			r.sync(ctx)
		}
	}
}

// subscribe follows activations published by every replica (nil without a
// store or when the notifier is unavailable: polling then covers it).
func (r *Reloader) subscribe(ctx context.Context) <-chan []byte {
	if r.store == nil {
		return nil
	}
	ch, err := r.store.Subscribe(ctx, storage.TopicPolicy)
	if err != nil {
		r.log.Warn("cannot follow policy activations of other replicas; polling instead", "err", err)
		return nil
	}
	return ch
}

func (r *Reloader) sync(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := r.Sync(sctx); err != nil && ctx.Err() == nil {
		r.log.Debug("policy sync", "err", err)
	}
}

func relevant(name string) bool {
	switch filepath.Ext(name) {
	case ".yaml", ".yml":
		return true
	}
	return false
}
