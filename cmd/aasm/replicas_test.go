package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

// gatewayBuild builds cmd/aa-gateway once per test binary.
var gatewayBuild struct {
	sync.Once
	path string
	err  error
}

// replica is one running aa-gateway process.
type replica struct {
	grpc, http string
	log        *syncbuf.Buffer
}

// startReplicas starts two aa-gateway processes sharing one PostgreSQL
// schema and one Redis prefix, as two replicas behind a load balancer.
func startReplicas(t *testing.T) [2]*replica {
	t.Helper()
	pgURL, redisURL := os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pgURL == "" || redisURL == "" {
		t.Skip("AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	gatewayBuild.Do(func() {
		dir, err := os.MkdirTemp("", "aa-gateway-bin")
		if err != nil {
			gatewayBuild.err = err
			return
		}
		gatewayBuild.path = filepath.Join(dir, "aa-gateway")
		if out, err := exec.Command("go", "build", "-o", gatewayBuild.path, "../aa-gateway").CombinedOutput(); err != nil {
			gatewayBuild.err = fmt.Errorf("go build aa-gateway: %v\n%s", err, out)
		}
	})
	if gatewayBuild.err != nil {
		t.Fatal(gatewayBuild.err)
	}
	schema, store := pgtest.Schema(t, "aasm_replicas")
	secrets := filepath.Join(t.TempDir(), "secrets.key")
	var out [2]*replica
	for i := range out {
		r := &replica{grpc: freeAddr(t), http: freeAddr(t), log: &syncbuf.Buffer{}}
		cmd := exec.Command(gatewayBuild.path, "-grpc-addr", r.grpc, "-api-addr", r.http, "-policy", "../../examples/policies",
			"-store", store, "-counters", pgtest.WithParam(redisURL, "prefix", schema+":"),
			"-secrets-key-file", secrets, "-admin-key-file", "none", "-replica-id", fmt.Sprintf("gw-%d", i), "-log-level", "warn")
		cmd.Env = append(os.Environ(), server.BootstrapKeyEnv+"="+servertest.AdminKey)
		cmd.Stdout, cmd.Stderr = r.log, r.log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if resp, err := http.Get("http://" + r.http + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d not ready:\n%s", i, r.log)
			}
		}
		out[i] = r
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestKeyLifecycleAcrossReplicaProcesses drives aasm admin key against two
// gateway processes sharing a store: a key created through one works on
// the other; rotated through one, its old secret is refused by the other on
// the very next call; revoked through one, it is refused at once by both,
// over gRPC and REST.
func TestKeyLifecycleAcrossReplicaProcesses(t *testing.T) {
	reps := startReplicas(t)
	a, b := reps[0], reps[1]
	// viewer runs a viewer command on r with key and returns its exit code
	// and stderr.
	viewer := func(r *replica, key string) (int, string) {
		code, _, errOut := runBin(t, "--addr", r.grpc, "--api-key", key, "agent", "list")
		return code, errOut
	}
	rest := func(r *replica, key string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.http+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var created struct {
		Key struct {
			ID      string `json:"id"`
			Role    string `json:"role"`
			Revoked bool   `json:"revoked"`
		} `json:"key"`
		Secret string `json:"secret"`
	}
	out := mustBin(t, 0, "--addr", a.grpc, "-o", "json", "admin", "key", "create", "--name", "ci", "--role", "viewer")
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Secret == "" || created.Key.ID == "" || created.Key.Role != "viewer" {
		t.Fatalf("key create on a: %v\n%s", err, out)
	}
	key, id := created.Secret, created.Key.ID
	for name, r := range map[string]*replica{"a": a, "b": b} {
		if code, errOut := viewer(r, key); code != 0 {
			t.Fatalf("new key on replica %s: exit %d %s", name, code, errOut)
		}
	}

	out = mustBin(t, 0, "--addr", b.grpc, "-o", "json", "admin", "key", "rotate", id)
	var rotated struct {
		Key    struct{ ID string } `json:"key"`
		Secret string              `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &rotated); err != nil || rotated.Key.ID != id || rotated.Secret == "" || rotated.Secret == key {
		t.Fatalf("key rotate on b: %v\n%s", err, out)
	}
	if code, errOut := viewer(a, key); code != exitError || !strings.Contains(errOut, "did not accept the credentials") {
		t.Fatalf("old secret on a right after the rotation on b: exit %d %s", code, errOut)
	}
	key = rotated.Secret
	if code, errOut := viewer(a, key); code != 0 {
		t.Fatalf("rotated secret on a: exit %d %s", code, errOut)
	}
	if c := rest(b, key); c != http.StatusOK {
		t.Fatalf("rotated secret over REST on b: %d", c)
	}

	mustBin(t, 0, "--addr", a.grpc, "admin", "key", "revoke", id)
	for name, r := range map[string]*replica{"a": a, "b": b} {
		if code, errOut := viewer(r, key); code != exitError || !strings.Contains(errOut, "did not accept the credentials") {
			t.Errorf("revoked key on replica %s: exit %d %s", name, code, errOut)
		}
		if c := rest(r, key); c != http.StatusUnauthorized {
			t.Errorf("revoked key over REST on replica %s: %d, want 401", name, c)
		}
	}
	var list struct {
		Keys []struct {
			ID      string `json:"id"`
			Revoked bool   `json:"revoked"`
		} `json:"keys"`
	}
	out = mustBin(t, 0, "--addr", b.grpc, "-o", "json", "admin", "key", "list")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range list.Keys {
		if k.ID == id {
			found = true
			if !k.Revoked {
				t.Errorf("key list on b shows %s active after the revocation on a", id)
			}
		}
	}
	if !found {
		t.Errorf("key list on b lacks %s:\n%s", id, out)
	}
}
