package alerts

import (
	"context"
	"errors"

	"github.com/agent-assembly/agent-assembly/storage"
)

// WatchBuffer is how many alerts a watcher may fall behind before its
// channel is closed (ErrWatcherBehind from Err).
const WatchBuffer = 256

// ErrWatcherBehind ends a watch whose consumer fell WatchBuffer alerts behind.
var ErrWatcherBehind = errors.New("alert watcher fell too far behind; list the alerts it missed and watch again")

// Filter selects alerts for a watcher. Zero values mean any.
type Filter struct {
	Kind string
	// MinSeverity keeps alerts at least this severe.
	MinSeverity      storage.AlertSeverity
	Org, Team, Agent string
}

// Matches reports whether a passes the filter.
func (f Filter) Matches(a *storage.Alert) bool {
	return storage.AlertQuery{Kind: f.Kind, Severities: storage.AtLeast(f.MinSeverity), Org: f.Org, Team: f.Team, Agent: f.Agent}.Matches(a)
}

// Watch is a live subscription to alerts stored by any replica.
type Watch struct {
	// C delivers alerts; it is closed when the watch ends.
	C   <-chan *storage.Alert
	w   *watcher
	eng *Engine
}

// Err says why C was closed: nil after the context ended or the engine
// closed, ErrWatcherBehind when the consumer was too slow.
func (w *Watch) Err() error {
	w.eng.mu.Lock()
	defer w.eng.mu.Unlock()
	return w.w.err
}

type watcher struct {
	f   Filter
	ch  chan *storage.Alert
	err error
}

// Watch streams alerts matching f that any replica stores after the call,
// silenced ones included, until ctx ends.
func (e *Engine) Watch(ctx context.Context, f Filter) (*Watch, error) {
	w := &watcher{f: f, ch: make(chan *storage.Alert, WatchBuffer)}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, errors.New("watch alerts: the alert engine is shut down")
	}
	e.watchers[w] = struct{}{}
	e.mu.Unlock()
	context.AfterFunc(ctx, func() { e.drop(w, nil) })
	return &Watch{C: w.ch, w: w, eng: e}, nil
}

func (e *Engine) drop(w *watcher, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.watchers[w]; ok {
		delete(e.watchers, w)
		w.err = err
		close(w.ch)
	}
}

// fanout reads new-alert notices from every replica and passes the alerts
// to local watchers. A notice is only a hint: the alert is read back from
// the store.
func (e *Engine) fanout(sub <-chan []byte) {
	defer e.subWG.Done()
	defer func() {
		e.mu.Lock()
		for w := range e.watchers {
			delete(e.watchers, w)
			close(w.ch)
		}
		e.mu.Unlock()
	}()
	for id := range sub {
		e.mu.Lock()
		n := len(e.watchers)
		e.mu.Unlock()
		if n == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(e.ctx, e.o.StoreTimeout)
		a, err := e.o.Store.GetAlert(ctx, string(id))
		cancel()
		if err != nil {
			e.log.Warn("read announced alert", "id", string(id), "err", err)
			continue
		}
		e.mu.Lock()
		for w := range e.watchers {
			if !w.f.Matches(a) {
				continue
			}
			select {
			case w.ch <- a:
			default:
				delete(e.watchers, w)
				w.err = ErrWatcherBehind
				close(w.ch)
			}
		}
		e.mu.Unlock()
	}
}
