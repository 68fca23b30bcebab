package runtime

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// errRefused means the gateway refuses to register the agent at all.
var errRefused = errors.New("the gateway refuses this agent")

// loadKey reads the agent's Ed25519 key from dir, creating it (0600) on
// first use, so the agent keeps one identity across runtime restarts.
func loadKey(dir string, a *agentState) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, a.ID.Org+"."+a.ID.Team+"."+a.ID.Agent+".key")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(b) != ed25519.SeedSize {
			return nil, fmt.Errorf("load agent key %s: %d bytes, want a %d-byte Ed25519 seed; delete it to make a new identity", path, len(b), ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(b), nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("load agent key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	if err := os.WriteFile(path, key.Seed(), 0o600); err != nil {
		return nil, fmt.Errorf("create agent key: %w", err)
	}
	return key, nil
}

// lifecycle registers the agent (Ed25519 challenge), keeps the credential
// token for its checks, heartbeats, and follows its control stream until
// ctx ends, registering again whenever the gateway stops accepting the token.
func (rt *Runtime) lifecycle(ctx context.Context, a *agentState) {
	key, err := loadKey(rt.opts.KeyDir, a)
	if err != nil {
		rt.log.Error("agent cannot register; its checks carry no credential", "agent", a.ID.String(), "err", err)
		return
	}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := rt.registerOnce(ctx, a, key)
		if ctx.Err() != nil || errors.Is(err, errRefused) {
			return
		}
		if errors.Is(err, errRenew) {
			rt.log.Info("renewing the agent's credential token before it expires", "agent", a.ID.String())
			backoff = 200 * time.Millisecond
			continue
		}
		rt.log.Warn("agent registration ended; registering again", "agent", a.ID.String(), "err", err)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (rt *Runtime) registerOnce(ctx context.Context, a *agentState, key ed25519.PrivateKey) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ch, err := rt.life.RequestChallenge(rctx, &v1.RequestChallengeRequest{Agent: a.pid})
	if err != nil {
		cancel()
		return fmt.Errorf("request challenge: %w", err)
	}
	reg, err := rt.life.Register(rctx, &v1.RegisterRequest{
		Agent: a.pid, PublicKey: key.Public().(ed25519.PublicKey), Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, ch.GetNonce()), Labels: map[string]string{"runtime": rt.opts.Name},
	})
	cancel()
	if status.Code(err) == codes.PermissionDenied {
		// The gateway will not let this agent run (it was killed): a kill
		// missed while the control stream was down is applied now.
		msg := status.Convert(err).Message()
		rt.log.Error("the gateway refuses the agent; stopping it", "agent", a.ID.String(), "reason", msg)
		if a.OnControl != nil {
			a.OnControl(&v1.ControlCommand{Type: v1.ControlCommand_TYPE_KILL, Agent: a.pid, Reason: msg})
		}
		return errRefused
	}
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	token := reg.GetCredentialToken()
	a.token.Store(&token)
	rt.log.Info("agent registered", "agent", a.ID.String(), "policy_version", reg.GetPolicyVersion())

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 3)
	go func() { errc <- rt.control(sctx, a, token) }()
	go func() { errc <- rt.heartbeat(sctx, a, token, reg.GetHeartbeatInterval().AsDuration()) }()
	if exp := reg.GetExpiresAt(); exp != nil {
		go func() { errc <- renewBefore(sctx, exp.AsTime()) }()
	}
	return <-errc
}

// errRenew ends a registration whose token is about to expire: the agent
// registers again (same key) while the old token still works, so its
// checks never carry an expired credential.
var errRenew = errors.New("credential token renewal due")

// renewBefore returns errRenew when four fifths of the time until exp have
// passed (at least a second from now), or ctx's error.
func renewBefore(ctx context.Context, exp time.Time) error {
	d := max(time.Until(exp)*4/5, time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errRenew
	}
}

// heartbeat reports liveness until the gateway refuses the token.
func (rt *Runtime) heartbeat(ctx context.Context, a *agentState, token string, every time.Duration) error {
	for {
		if every <= 0 {
			every = rt.opts.Heartbeat
		}
		sleep(ctx, every)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := rt.life.Heartbeat(hctx, &v1.HeartbeatRequest{Agent: a.pid, CredentialToken: token})
		cancel()
		switch {
		case err == nil:
			every = resp.GetNextInterval().AsDuration()
		case status.Code(err) == codes.Unauthenticated || status.Code(err) == codes.PermissionDenied:
			return fmt.Errorf("heartbeat: %w", err)
		default:
			rt.log.Debug("heartbeat failed", "agent", a.ID.String(), "err", err)
		}
	}
}

// control follows the agent's command stream: kill and suspend are handed
// to the agent's OnControl hook (aa-runtime exec kills the agent's cgroup).
func (rt *Runtime) control(ctx context.Context, a *agentState, token string) error {
	stream, err := rt.life.ControlStream(ctx, &v1.ControlStreamRequest{Agent: a.pid, CredentialToken: token})
	if err != nil {
		return fmt.Errorf("control stream: %w", err)
	}
	for {
		cmd, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		rt.log.Info("control command", "agent", a.ID.String(), "type", cmd.GetType().String(), "reason", cmd.GetReason())
		rt.cache.invalidate()
		if a.OnControl != nil {
			a.OnControl(cmd)
		}
	}
}
