package memory

import (
	"testing"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s := New(Options{})
		t.Cleanup(func() { s.Close() })
		return s
	},
		storagetest.TamperAudit(func(t *testing.T, s storage.Store, chain string, seq int64) {
			m := s.(*Store)
			m.mu.Lock()
			defer m.mu.Unlock()
			r := m.chains[chain][seq-1]
			r.Payload[0] ^= 0x01
		}),
	)
}

func TestConformanceSealed(t *testing.T) {
	k, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.New(k)
	if err != nil {
		t.Fatal(err)
	}
	storagetest.RunSecrets(t, func(t *testing.T) *Store {
		s := New(Options{Sealer: box})
		t.Cleanup(func() { s.Close() })
		return s
	}, storagetest.RawSecrets(func(t *testing.T, s *Store) [][]byte {
		s.mu.RLock()
		defer s.mu.RUnlock()
		var out [][]byte
		for _, sec := range s.secrets {
			out = append(out, sec.value)
		}
		return out
	}))
}

func TestSecretsReseal(t *testing.T) {
	storagetest.RunSecretsReseal(t, func(t *testing.T, sealer storage.Sealer, on storage.Secrets) storage.Secrets {
		if on == nil {
			s := New(Options{Sealer: sealer})
			t.Cleanup(func() { s.Close() })
			return s
		}
		m := on.(*Store)
		m.mu.Lock()
		m.opts.Sealer = sealer // the backend is this Store: a restart with other keys
		m.mu.Unlock()
		return m
	})
}
