package gateway

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

func newSecretsService(t *testing.T) (*SecretsService, *memory.Store, *recorder) {
	t.Helper()
	key, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New(memory.Options{Sealer: box})
	rec := &recorder{}
	return NewSecretsService(newTestCore(t, rec), st), st, rec
}

func wantCode(t *testing.T, err error, c codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != c {
		t.Fatalf("err = %v, want %s", err, c)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Fatalf("err = %v, want it to mention %q", err, contains)
	}
}

func TestPutSecretValidates(t *testing.T) {
	svc, _, rec := newSecretsService(t)
	ctx := context.Background()
	cases := []struct {
		name, field string
		req         *v1.PutSecretRequest
	}{
		{"empty name", "name: is required", &v1.PutSecretRequest{Value: []byte("x")}},
		{"lower case", SecretNamePattern, &v1.PutSecretRequest{Name: "openai_key", Value: []byte("x")}},
		{"leading digit", SecretNamePattern, &v1.PutSecretRequest{Name: "1KEY", Value: []byte("x")}},
		{"dash", SecretNamePattern, &v1.PutSecretRequest{Name: "API-KEY", Value: []byte("x")}},
		{"too long", SecretNamePattern, &v1.PutSecretRequest{Name: "A" + strings.Repeat("B", 64), Value: []byte("x")}},
		{"empty value", "value: is empty", &v1.PutSecretRequest{Name: "KEY"}},
		{"large value", "over the limit of 65536", &v1.PutSecretRequest{Name: "KEY", Value: make([]byte, MaxSecretBytes+1)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := svc.PutSecret(ctx, c.req)
			wantCode(t, err, codes.InvalidArgument, c.field)
		})
	}
	if len(rec.recs) != 0 {
		t.Fatalf("rejected puts wrote %d audit records", len(rec.recs))
	}
	// The longest valid name and value are accepted.
	if _, err := svc.PutSecret(ctx, &v1.PutSecretRequest{Name: "A" + strings.Repeat("B", 63), Value: make([]byte, MaxSecretBytes)}); err != nil {
		t.Fatal(err)
	}
}

func TestSecretsRoundTripWithoutValues(t *testing.T) {
	svc, st, rec := newSecretsService(t)
	ctx := context.Background()
	const value = "sk-very-secret-value-123"
	info, err := svc.PutSecret(ctx, &v1.PutSecretRequest{Name: "OPENAI_API_KEY", Value: []byte(value)})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetName() != "OPENAI_API_KEY" || info.GetVersion() != 1 || info.GetUpdatedAt() == nil {
		t.Fatalf("info = %v", info)
	}
	info, err = svc.PutSecret(ctx, &v1.PutSecretRequest{Name: "OPENAI_API_KEY", Value: []byte(value + "2")})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetVersion() != 2 {
		t.Fatalf("version after second put = %d, want 2", info.GetVersion())
	}
	if _, err := svc.PutSecret(ctx, &v1.PutSecretRequest{Name: "GITHUB_TOKEN", Value: []byte("ghp_x")}); err != nil {
		t.Fatal(err)
	}

	list, err := svc.ListSecrets(ctx, &v1.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.GetSecrets() {
		names = append(names, s.GetName())
	}
	if strings.Join(names, ",") != "GITHUB_TOKEN,OPENAI_API_KEY" {
		t.Fatalf("names = %v", names)
	}
	if got, err := st.GetSecret(ctx, "OPENAI_API_KEY"); err != nil || string(got) != value+"2" {
		t.Fatalf("stored value = %q, %v", got, err)
	}

	if len(rec.recs) != 3 {
		t.Fatalf("audit records = %d, want 3", len(rec.recs))
	}
	for _, r := range rec.recs {
		if r.Event != storage.EventGovernance || r.RuleID != "secret.put" {
			t.Errorf("record event %s rule %s", r.Event, r.RuleID)
		}
		if bytes.Contains(r.Payload, []byte("sk-very")) || bytes.Contains(r.Payload, []byte("ghp_x")) ||
			strings.Contains(r.Reason, "sk-very") || strings.Contains(r.Reason, "ghp_x") {
			t.Errorf("audit record leaks the value: payload %s reason %q", r.Payload, r.Reason)
		}
	}
	if !strings.Contains(rec.recs[0].Reason, "OPENAI_API_KEY") || !bytes.Contains(rec.recs[0].Payload, []byte(`"OPENAI_API_KEY"`)) {
		t.Errorf("audit record does not name the secret: %s %q", rec.recs[0].Payload, rec.recs[0].Reason)
	}
}

func TestDeleteSecret(t *testing.T) {
	svc, _, rec := newSecretsService(t)
	ctx := context.Background()
	_, err := svc.DeleteSecret(ctx, &v1.DeleteSecretRequest{Name: "MISSING"})
	wantCode(t, err, codes.NotFound, "MISSING")
	_, err = svc.DeleteSecret(ctx, &v1.DeleteSecretRequest{Name: "bad name"})
	wantCode(t, err, codes.InvalidArgument, SecretNamePattern)
	if len(rec.recs) != 0 {
		t.Fatalf("failed deletes wrote %d audit records", len(rec.recs))
	}

	if _, err := svc.PutSecret(ctx, &v1.PutSecretRequest{Name: "KEY", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.DeleteSecret(ctx, &v1.DeleteSecretRequest{Name: "KEY"}); err != nil {
		t.Fatal(err)
	}
	list, err := svc.ListSecrets(ctx, &v1.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetSecrets()) != 0 {
		t.Fatalf("secrets after delete = %v", list.GetSecrets())
	}
	last := rec.last(t)
	if last.RuleID != "secret.delete" || !strings.Contains(last.Reason, "KEY") {
		t.Fatalf("delete audit = %s %q", last.RuleID, last.Reason)
	}
	_, err = svc.DeleteSecret(ctx, &v1.DeleteSecretRequest{Name: "KEY"})
	wantCode(t, err, codes.NotFound, "KEY")
}

func TestPutSecretFailsWhenAuditFails(t *testing.T) {
	svc, _, rec := newSecretsService(t)
	rec.err = storage.ErrUnavailable
	_, err := svc.PutSecret(context.Background(), &v1.PutSecretRequest{Name: "KEY", Value: []byte("v")})
	wantCode(t, err, codes.Unavailable, "KEY")
}
