package bpf_test

import (
	"context"
	"log/slog"
	"sync"
)

// lockedHandler serialises a handler that writes to a shared buffer.
type lockedHandler struct {
	h  slog.Handler
	mu *sync.Mutex
}

func (l *lockedHandler) Enabled(ctx context.Context, lvl slog.Level) bool {
	return l.h.Enabled(ctx, lvl)
}

func (l *lockedHandler) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.Handle(ctx, r)
}

func (l *lockedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &lockedHandler{h: l.h.WithAttrs(as), mu: l.mu}
}

func (l *lockedHandler) WithGroup(name string) slog.Handler {
	return &lockedHandler{h: l.h.WithGroup(name), mu: l.mu}
}
