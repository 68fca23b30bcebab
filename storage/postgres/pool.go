package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

// pool is a small LIFO pool of pgx connections. It dials on demand, so it
// recovers by itself when the server comes back after an outage: broken
// connections are dropped when they fail and, after pingIdle of idleness, are
// pinged before they are handed out again.
//
// It stands in for pgxpool, whose dependency (jackc/puddle) is not in this
// module's go.sum; the Store only uses acquire and release, so switching is
// local to this file.
type pool struct {
	cfg      *pgx.ConnConfig
	slots    chan struct{} // a token per connection in use or dialling
	pingIdle time.Duration // ping a connection idle this long before use
	maxIdle  time.Duration // close a connection idle this long instead

	mu     sync.Mutex
	idle   []idleConn // most recently used last
	closed bool
}

type idleConn struct {
	c     *pgx.Conn
	since time.Time
}

func newPool(cfg *pgx.ConnConfig, maxConns int) *pool {
	return &pool{cfg: cfg, slots: make(chan struct{}, maxConns), pingIdle: time.Second, maxIdle: 10 * time.Minute}
}

// acquire returns a connection for the caller's exclusive use until release.
func (p *pool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, storage.ErrClosed
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		ic := p.idle[n-1]
		p.idle[n-1] = idleConn{}
		p.idle = p.idle[:n-1]
		p.mu.Unlock()

		idle := time.Since(ic.since)
		if ic.c.IsClosed() {
			continue
		}
		if idle >= p.maxIdle {
			closeConn(ic.c)
			continue
		}
		if idle >= p.pingIdle {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := ic.c.Ping(pctx)
			cancel()
			if err != nil {
				closeConn(ic.c)
				if ctx.Err() != nil {
					<-p.slots
					return nil, context.Cause(ctx)
				}
				continue
			}
		}
		return ic.c, nil
	}
	c, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// release gives c back. A connection that is closed, busy or inside a
// transaction is discarded rather than reused.
func (p *pool) release(c *pgx.Conn) {
	defer func() { <-p.slots }()
	pc := c.PgConn()
	if c.IsClosed() || pc.IsBusy() || pc.TxStatus() != 'I' {
		closeConn(c)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		closeConn(c)
		return
	}
	p.idle = append(p.idle, idleConn{c: c, since: time.Now()})
	p.mu.Unlock()
}

// close closes the idle connections; connections in use are closed when
// they are released.
func (p *pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.closed = true
	p.mu.Unlock()
	for _, ic := range idle {
		closeConn(ic.c)
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}
