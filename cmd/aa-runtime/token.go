package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
	"github.com/agent-assembly/agent-assembly/runtime"
)

// tokenCmd registers an agent through the Ed25519 challenge and prints its
// credential token, for components that present it without registering
// themselves: an Envoy sidecar (AA_CREDENTIAL_TOKEN), aa-runtime's token=.
func tokenCmd(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("aa-runtime token", flag.ContinueOnError)
	gateway := fs.String("gateway", envOr("AA_GATEWAY_ADDR", "127.0.0.1:50051"), "gateway gRPC address, or several replicas comma-separated (host:port,host:port) ($AA_GATEWAY_ADDR)")
	agent := fs.String("agent", os.Getenv("AA_AGENT_ID"), "the agent: org/team/agent ($AA_AGENT_ID)")
	keyFile := fs.String("key", "", "the agent's Ed25519 key seed (32 bytes, created 0600 when missing; default ./<org>.<team>.<agent>.key); register with the same key every time, or the gateway refuses the agent")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on the registration")
	outFile := fs.String("out", "", "write the token to this file (mode 0640, replaced atomically) instead of stdout; a sidecar or SDK reads it through $AA_CREDENTIAL_TOKEN_FILE")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	id, err := runtime.ParseAgentID(*agent)
	if err != nil {
		fmt.Fprintf(os.Stderr, "aa-runtime token: --agent: %v\n", err)
		return 2
	}
	if *keyFile == "" {
		*keyFile = id.Org + "." + id.Team + "." + id.Agent + ".key"
	}
	key, err := agentKey(*keyFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "aa-runtime token: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	tok, err := register(ctx, *gateway, &v1.AgentId{OrgId: id.Org, TeamId: id.Team, AgentId: id.Agent}, key)
	if err != nil {
		fmt.Fprintf(os.Stderr, "aa-runtime token: %v\n", err)
		return 1
	}
	if *outFile != "" {
		if err := writeToken(*outFile, tok); err != nil {
			fmt.Fprintf(os.Stderr, "aa-runtime token: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(out, tok)
	return 0
}

// writeToken writes tok to path through a temporary file in the same
// directory, so a reader never sees a partial token. The mode is 0640: the
// pod's other containers read it through their shared group (fsGroup).
func writeToken(path, tok string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".token-*")
	if err != nil {
		return fmt.Errorf("write token %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(tok + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write token %s: %w", path, err)
	}
	if err := tmp.Chmod(0o640); err != nil {
		tmp.Close()
		return fmt.Errorf("write token %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write token %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write token %s: %w", path, err)
	}
	return nil
}

// agentKey reads the key seed at path, creating it (0600) when missing.
func agentKey(path string) (ed25519.PrivateKey, error) {
	seed, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("agent key %s is %d bytes, want a %d-byte Ed25519 seed", path, len(seed), ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read agent key: %w", err)
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	if err := os.WriteFile(path, key.Seed(), 0o600); err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	return key, nil
}

// register runs RequestChallenge and Register and returns the token.
func register(ctx context.Context, gateway string, id *v1.AgentId, key ed25519.PrivateKey) (string, error) {
	target, opts, err := gatewaydial.Target(gateway)
	if err != nil {
		return "", err
	}
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return "", fmt.Errorf("dial gateway %s: %w", gateway, err)
	}
	defer conn.Close()
	life := v1.NewAgentLifecycleServiceClient(conn)
	ch, err := life.RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: id})
	if err != nil {
		return "", fmt.Errorf("request challenge from %s: %w", gateway, err)
	}
	resp, err := life.Register(ctx, &v1.RegisterRequest{Agent: id, PublicKey: key.Public().(ed25519.PublicKey),
		Nonce: ch.GetNonce(), Signature: ed25519.Sign(key, ch.GetNonce()), Labels: map[string]string{"registered_by": "aa-runtime token"}})
	if err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	return resp.GetCredentialToken(), nil
}
