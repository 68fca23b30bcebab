package redis

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// tcpProxy forwards a loopback port to Redis. Stopping it refuses
// new connections and cuts the open ones, which is what a client sees when
// the server goes down; starting it again on the same port is the server
// coming back. Unlike stopping the shared test server, it disturbs no other
// test.
type tcpProxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

func newProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{t: t, target: target, conns: make(map[net.Conn]struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.stop)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln { // stopped meanwhile
				p.mu.Unlock()
				c.Close()
				up.Close()
				return
			}
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(c, up)
			go pipe(up, c)
		}
	}()
}

// stop closes the listener and every forwarded connection.
func (p *tcpProxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// start listens on the same port again.
func (p *tcpProxy) start() {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOutage takes Redis away under a running store: every operation fails
// with ErrUnavailable naming the server, and when Redis returns the same
// store works again and the subscription made before the outage hears new
// messages.
func TestOutage(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, u.Host)
	u.Host = proxy.addr
	ctx := t.Context()
	s, err := Open(ctx, u.String(), Options{Prefix: newPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub, err := s.Subscribe(ctx, "outage")
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	if _, err := s.Reserve(ctx, "budget:x", 5, 10, exp); err != nil {
		t.Fatal(err)
	}

	proxy.stop()
	ops := map[string]func() error{
		"Ping":      func() error { return s.Ping(ctx) },
		"Reserve":   func() error { _, err := s.Reserve(ctx, "budget:x", 1, 10, exp); return err },
		"Adjust":    func() error { _, err := s.Adjust(ctx, "budget:x", 1, exp); return err },
		"Counter":   func() error { _, err := s.Counter(ctx, "budget:x"); return err },
		"TakeToken": func() error { _, _, err := s.TakeToken(ctx, "rate:x", 1, 1, time.Now()); return err },
		"Publish":   func() error { return s.Publish(ctx, "outage", []byte("x")) },
		"Subscribe": func() error { _, err := s.Subscribe(ctx, "other"); return err },
	}
	for name, op := range ops {
		err := op()
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("%s with Redis down: %v, want an error matching ErrUnavailable", name, err)
		}
		if !strings.Contains(err.Error(), "redis "+proxy.addr) {
			t.Errorf("%s error %q does not name the server %s", name, err, proxy.addr)
		}
	}

	proxy.start()
	deadline := time.Now().Add(10 * time.Second)
	var res storage.Reservation
	for {
		res, err = s.Reserve(ctx, "budget:x", 5, 10, exp)
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Reserve after Redis returned: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !res.Allowed || res.Used != 10 {
		t.Fatalf("Reserve after the outage = %+v, want allowed with 10 used (state kept)", res)
	}
	stop := time.After(15 * time.Second)
	for got := false; !got; {
		if err := s.Publish(ctx, "outage", []byte("back")); err != nil {
			t.Fatalf("Publish after the outage: %v", err)
		}
		select {
		case m := <-sub:
			got = string(m) == "back"
		case <-time.After(200 * time.Millisecond):
		case <-stop:
			t.Fatal("the subscription made before the outage hears nothing after it")
		}
	}
}
