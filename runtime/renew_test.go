package runtime

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRenewBefore: a registration ends for renewal before its token
// expires, and not when its context ends first.
func TestRenewBefore(t *testing.T) {
	if err := renewBefore(context.Background(), time.Now().Add(1200*time.Millisecond)); !errors.Is(err, errRenew) {
		t.Fatalf("renewBefore = %v, want errRenew", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := renewBefore(ctx, time.Now().Add(time.Hour)); !errors.Is(err, context.Canceled) {
		t.Fatalf("renewBefore with a cancelled context = %v", err)
	}
}
