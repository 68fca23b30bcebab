package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestWithParam(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://h/db", "postgres://h/db?schema=s"},
		{"postgres://h/db?sslmode=disable", "postgres://h/db?sslmode=disable&schema=s"},
	} {
		if got := WithParam(tc.in, "schema", "s"); got != tc.want {
			t.Errorf("WithParam(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestSchemaExistsUntilCleanup: the schema is there during the test and
// gone after its cleanup.
func TestSchemaExistsUntilCleanup(t *testing.T) {
	base := URL(t)
	var name string
	t.Run("inner", func(t *testing.T) {
		name, _ = Schema(t, "pgtest")
		if !exists(t, base, name) {
			t.Fatalf("schema %s was not created", name)
		}
	})
	if exists(t, base, name) {
		t.Fatalf("schema %s is still there after its test ended", name)
	}
}

func exists(t *testing.T, base, name string) bool {
	t.Helper()
	c, err := pgx.Connect(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}
