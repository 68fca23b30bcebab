package memory

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/internal/broadcast"
)

// NotifierBuffer is how many messages a subscriber may fall behind before
// further messages to it are dropped. Notifications are hints (wake up,
// invalidate); their receivers re-read the store.
const NotifierBuffer = 256

// Notifier is an in-process storage.Notifier. Other drivers embed it for
// fan-out within one process.
type Notifier struct {
	mu     sync.Mutex
	topics map[string]*broadcast.Broadcaster[[]byte]
	closed bool
}

var _ storage.Notifier = (*Notifier)(nil)

// NewNotifier returns an empty notifier.
func NewNotifier() *Notifier {
	return &Notifier{topics: make(map[string]*broadcast.Broadcaster[[]byte])}
}

// Publish sends a copy of payload to every current subscriber of topic.
func (n *Notifier) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return fmt.Errorf("publish to %q: %w", topic, storage.ErrClosed)
	}
	b := n.topics[topic]
	n.mu.Unlock()
	if b != nil {
		b.Publish(bytes.Clone(payload))
	}
	return nil
}

// Subscribe delivers messages published to topic after the call until ctx
// ends or the notifier is closed. Receivers must not modify the payloads.
func (n *Notifier) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, storage.ErrClosed)
	}
	b := n.topics[topic]
	if b == nil {
		b = broadcast.New[[]byte](NotifierBuffer, broadcast.Drop)
		n.topics[topic] = b
	}
	return b.Subscribe(ctx), nil
}

// Close ends every subscription.
func (n *Notifier) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for _, b := range n.topics {
		b.Close()
	}
	return nil
}
