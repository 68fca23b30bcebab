package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

// secretsBox loads the key that seals secrets (created on first start) and
// the old keys that only open them. It returns the Box and the number of
// old keys.
func secretsBox(cfg Config) (*secretbox.Box, int, error) {
	key, err := secretbox.LoadOrCreateKeyFile(cfg.SecretsKeyFile)
	if err != nil {
		return nil, 0, fmt.Errorf("secrets key %s: %w", cfg.SecretsKeyFile, err)
	}
	old := make([]secretbox.Key, 0, len(cfg.SecretsExtraKeyFiles))
	for _, p := range cfg.SecretsExtraKeyFiles {
		k, err := secretbox.ReadKeyFile(p)
		if err != nil {
			return nil, 0, fmt.Errorf("--secrets-extra-key-files: %w", err)
		}
		if k == key {
			return nil, 0, fmt.Errorf("--secrets-extra-key-files: %s holds the current key (the one in --secrets-key-file %s), not an old one", p, cfg.SecretsKeyFile)
		}
		old = append(old, k)
	}
	box, err := secretbox.New(key, old...)
	if err != nil {
		return nil, 0, fmt.Errorf("secrets key %s: %w", cfg.SecretsKeyFile, err)
	}
	return box, len(old), nil
}

// resealSecrets rewrites every stored secret sealed with an old key under
// the current one, so the old key files can be removed once every replica
// has done it. A secret no configured key opens is logged by name; the
// gateway still starts (its other secrets work).
func resealSecrets(ctx context.Context, st storage.Secrets, log *slog.Logger) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := st.ResealSecrets(rctx)
	if n > 0 {
		log.Info("resealed stored secrets with the current secrets key; the old key files can go once every replica has started with this key", "secrets", n)
	}
	if err != nil {
		log.Error("some stored secrets could not be resealed with the current secrets key", "err", err)
	}
}
