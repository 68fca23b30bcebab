// Package pgtest gives tests a throwaway schema on the PostgreSQL server
// named by AA_TEST_POSTGRES_URL (scripts/testdb.sh starts one on loopback),
// and skips them, saying how to get one, when there is none.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL is the environment variable naming the test server.
const EnvURL = "AA_TEST_POSTGRES_URL"

// URL returns the test server's URL, or skips t.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u == "" {
		t.Skip(EnvURL + " not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	return u
}

// Schema creates a schema named prefix_<nanoseconds> on the test server,
// drops it when t ends, and returns its name and the server's URL with
// schema=<name> (how the store drivers select it). It skips t when there is
// no test server.
func Schema(t testing.TB, prefix string) (name, storeURL string) {
	t.Helper()
	base := URL(t)
	name = fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	conn, err := pgx.Connect(context.Background(), base)
	if err != nil {
		t.Fatalf("connect to %s: %v", EnvURL, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), base); err == nil {
			_, _ = c.Exec(context.Background(), "DROP SCHEMA "+name+" CASCADE")
			_ = c.Close(context.Background())
		}
	})
	return name, WithParam(base, "schema", name)
}

// WithParam returns the URL u with the query parameter k=v added.
func WithParam(u, k, v string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + k + "=" + v
}
