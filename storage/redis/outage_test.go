package redis

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/faultproxy"
	"github.com/agent-assembly/agent-assembly/storage"
)

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
	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
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

	proxy.Stop()
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
		if !strings.Contains(err.Error(), "redis "+proxy.Addr()) {
			t.Errorf("%s error %q does not name the server %s", name, err, proxy.Addr())
		}
	}

	proxy.Start()
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
