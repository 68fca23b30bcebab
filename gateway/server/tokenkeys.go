package server

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/identity"
)

// tokenKeyRefresh is how often a replica reloads the token-signing keys, so
// that a rotation made on another replica reaches it (a token signed with a
// key it does not know yet makes it reload at once).
const tokenKeyRefresh = 10 * time.Second

// newIssuer loads the token-signing keys and returns the issuer of agent
// credential tokens, which reloads them through reloadTokenKeys.
func (s *Server) newIssuer(ctx context.Context) error {
	kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cur, prev, err := identity.LoadSigningKeys(kctx, s.store)
	if err != nil {
		return err
	}
	iss, err := identity.NewIssuer(cur, identity.Options{Registry: s.cached, Reload: s.reloadTokenKeys})
	if err != nil {
		return err
	}
	if _, _, err := iss.SetKeys(cur, prev); err != nil {
		return err
	}
	s.issuer = iss
	return nil
}

// reloadTokenKeys brings the issuer's keys in line with the store. When a
// key was revoked, cached token verifications are dropped.
func (s *Server) reloadTokenKeys(ctx context.Context) error {
	cur, prev, err := identity.LoadSigningKeys(ctx, s.store)
	if err != nil {
		return err
	}
	before := s.issuer.KeyIDs()
	changed, removed, err := s.issuer.SetKeys(cur, prev)
	if err != nil {
		return err
	}
	if removed {
		s.agentAuth.ForgetAll()
	}
	if changed {
		s.log.Info("token-signing keys changed", "keys", s.issuer.KeyIDs(), "before", before, "revoked", removed)
	}
	return nil
}

// runTokenKeyRefresh reloads the token-signing keys every tokenKeyRefresh
// until ctx ends.
func (s *Server) runTokenKeyRefresh(ctx context.Context, wg *sync.WaitGroup) {
	every(ctx, wg, tokenKeyRefresh, func() {
		if err := s.reloadTokenKeys(ctx); err != nil {
			s.log.Warn("reload token-signing keys; keeping the current ones", "err", err)
		}
	})
}

// RotateTokenKey implements gateway.TokenKeyRotator.
func (s *Server) RotateTokenKey(ctx context.Context, revokePrevious bool) (gateway.TokenKeys, error) {
	if err := s.reloadTokenKeys(ctx); err != nil { // what the store holds now is what is replaced
		return gateway.TokenKeys{}, err
	}
	before := s.issuer.KeyIDs()
	cur, prev, err := identity.RotateSigningKey(ctx, s.store, revokePrevious)
	if err != nil {
		return gateway.TokenKeys{}, err
	}
	_, removed, err := s.issuer.SetKeys(cur, prev)
	if err != nil {
		return gateway.TokenKeys{}, err
	}
	if removed {
		s.agentAuth.ForgetAll()
	}
	after := s.issuer.KeyIDs()
	k := gateway.TokenKeys{Current: after[0]}
	if len(after) > 1 {
		k.Previous = after[1]
	}
	for _, id := range before {
		if !slices.Contains(after, id) {
			k.Revoked = append(k.Revoked, id)
		}
	}
	s.log.Info("token-signing key rotated", "key", k.Current, "previous", k.Previous, "revoked", k.Revoked)
	return k, nil
}
