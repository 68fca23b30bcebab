package identity_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/postgres"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
	"github.com/jackc/pgx/v5"
)

var coder = action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}

func newIssuer(t *testing.T, opts identity.Options) *identity.Issuer {
	t.Helper()
	i, err := identity.NewIssuer(bytes.Repeat([]byte{7}, 32), opts)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func TestIssueAndVerify(t *testing.T) {
	st := memory.New(memory.Options{})
	ctx := context.Background()
	if err := st.PutAgent(ctx, &storage.Agent{ID: coder, Status: storage.AgentActive}); err != nil {
		t.Fatal(err)
	}
	iss := newIssuer(t, identity.Options{Registry: st, TTL: time.Hour})
	tok, claims, err := iss.Issue(coder)
	if err != nil {
		t.Fatal(err)
	}
	got, err := iss.VerifyToken(ctx, tok)
	if err != nil || got != coder {
		t.Fatalf("VerifyToken = %s, %v; want %s", got, err, coder)
	}
	if claims.TokenID == "" || claims.ExpiresAt.Sub(claims.IssuedAt) < 59*time.Minute {
		t.Fatalf("claims %+v: want a token id and an hour's validity", claims)
	}

	// Revoked.
	if err := st.RevokeCredential(ctx, claims.TokenID, claims.ExpiresAt); err != nil {
		t.Fatal(err)
	}
	if _, err := iss.VerifyToken(ctx, tok); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("revoked token: %v, want ErrRevoked", err)
	}

	// A killed agent's tokens are invalid.
	tok2, _, _ := iss.Issue(coder)
	if err := st.SetAgentStatus(ctx, coder, storage.AgentKilled, "kill switch"); err != nil {
		t.Fatal(err)
	}
	if _, err := iss.VerifyToken(ctx, tok2); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("killed agent's token: %v, want ErrRevoked", err)
	}
	// An unknown agent's token is invalid.
	tok3, _, _ := iss.Issue(action.AgentID{Org: "a", Team: "b", Agent: "gone"})
	if _, err := iss.VerifyToken(ctx, tok3); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("unknown agent's token: %v, want ErrRevoked", err)
	}
}

func TestRejectsForgedExpiredAndMalformed(t *testing.T) {
	now := time.Now()
	iss := newIssuer(t, identity.Options{TTL: time.Minute, Now: func() time.Time { return now }})
	tok, _, err := iss.Issue(coder)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewIssuer(bytes.Repeat([]byte{8}, 32), identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Parse(tok); !errors.Is(err, identity.ErrBadSignature) {
		t.Fatalf("token of another key: %v, want ErrBadSignature", err)
	}
	// Change the claims (another agent) but keep the signature.
	parts := strings.Split(tok, ".")
	forged, _, _ := other.Issue(action.AgentID{Org: "acme", Team: "eng", Agent: "admin"})
	fparts := strings.Split(forged, ".")
	if _, err := iss.Parse(parts[0] + "." + fparts[1] + "." + parts[2]); !errors.Is(err, identity.ErrBadSignature) {
		t.Fatalf("swapped claims: %v, want ErrBadSignature", err)
	}
	for _, bad := range []string{"", "aa1.", "aa1.x", "bearer xyz", "aa1.e30.!!!", parts[0] + "." + parts[1] + "." + parts[2][:10]} {
		if _, err := iss.Parse(bad); !errors.Is(err, identity.ErrMalformed) {
			t.Fatalf("Parse(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	now = now.Add(2 * time.Minute)
	if _, err := iss.Parse(tok); !errors.Is(err, identity.ErrExpired) {
		t.Fatalf("expired token: %v, want ErrExpired", err)
	}
	if _, err := identity.NewIssuer([]byte("short"), identity.Options{}); err == nil {
		t.Fatal("NewIssuer accepted a 5-byte seed")
	}
}

func TestSigningKeyIsSharedByConcurrentStarts(t *testing.T) {
	st := memory.New(memory.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var seeds [][]byte
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			seed, err := identity.LoadOrCreateSigningKey(ctx, st)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seeds = append(seeds, seed)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(seeds) != 8 {
		t.Fatalf("%d of 8 starts got a key", len(seeds))
	}
	for _, s := range seeds[1:] {
		if !bytes.Equal(s, seeds[0]) {
			t.Fatal("concurrent starts on one store got different signing keys")
		}
	}
	again, err := identity.LoadOrCreateSigningKey(ctx, st)
	if err != nil || !bytes.Equal(again, seeds[0]) {
		t.Fatalf("a later start got %x, %v; want the stored key", again, err)
	}
}

// TestSigningKeySharedByReplicasOnPostgres starts key loading on two stores
// over one fresh PostgreSQL schema at once, as two replicas would.
func TestSigningKeySharedByReplicasOnPostgres(t *testing.T) {
	url := os.Getenv("AA_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("AA_TEST_POSTGRES_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema := fmt.Sprintf("identity_%d", time.Now().UnixNano())
	var key secretbox.Key
	key[0] = 3
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	var stores [2]*postgres.Store
	for i := range stores {
		st, err := postgres.Open(ctx, url, postgres.Options{Schema: schema, Sealer: box})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		stores[i] = st
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), url); err == nil {
			c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			c.Close(context.Background())
		}
	})
	var seeds [2][]byte
	var wg sync.WaitGroup
	for i, st := range stores {
		wg.Go(func() {
			s, err := identity.LoadOrCreateSigningKey(ctx, st)
			if err != nil {
				t.Error(err)
			}
			seeds[i] = s
		})
	}
	wg.Wait()
	if len(seeds[0]) != 32 || !bytes.Equal(seeds[0], seeds[1]) {
		t.Fatalf("two replicas starting together got different keys: %x / %x", seeds[0], seeds[1])
	}
}
