package alerts

import (
	"errors"
	"testing"
	"time"
)

func TestSignAndVerify(t *testing.T) {
	now := time.Unix(1_764_100_000, 0)
	body := []byte(`{"id":"a1"}`)
	h := Sign(secret, now, body)
	// The documented recipe, computed independently: HMAC-SHA256("1764100000.{\"id\":\"a1\"}").
	if want := "t=1764100000,v1=" + mac(secret, "1764100000", body); h != want {
		t.Fatalf("Sign = %s, want %s", h, want)
	}
	if err := Verify(secret, h, body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("Verify(good) = %v", err)
	}
	for name, c := range map[string]struct {
		secret []byte
		header string
		body   string
		now    time.Time
	}{
		"tampered body": {secret, h, `{"id":"a2"}`, now},
		"wrong secret":  {[]byte("other"), h, string(body), now},
		"stale":         {secret, h, string(body), now.Add(6 * time.Minute)},
		"malformed":     {secret, "sha256=abc", string(body), now},
		"no v1":         {secret, "t=1764100000", string(body), now},
	} {
		if err := Verify(c.secret, c.header, []byte(c.body), c.now, 5*time.Minute); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: Verify = %v, want ErrBadSignature", name, err)
		}
	}
	// A rotated secret: the receiver accepts either v1.
	if err := Verify(secret, "t=1764100000,v1=00,v1="+mac(secret, "1764100000", body), body, now, time.Minute); err != nil {
		t.Errorf("second v1 entry not accepted: %v", err)
	}
}

func TestIDIsDeterministic(t *testing.T) {
	a := ID(KindBudgetThreshold, "budget:v1:agent:acme/eng/bot:daily:2026-11-26", "80")
	if a != ID(KindBudgetThreshold, "budget:v1:agent:acme/eng/bot:daily:2026-11-26", "80") {
		t.Fatal("ID differs for the same event")
	}
	if a == ID(KindBudgetThreshold, "budget:v1:agent:acme/eng/bot:daily:2026-11-26", "95") ||
		ID(KindXDSNack, "ab", "c") == ID(KindXDSNack, "a", "bc") {
		t.Fatal("ID collides for different events")
	}
}
