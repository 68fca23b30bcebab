package memory

import (
	"testing"

	"github.com/agent-assembly/agent-assembly/storage"
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
