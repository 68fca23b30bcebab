package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/storage"
)

// holdTTL is how long a budget reservation waits for its usage report.
// After it, the estimate stays charged and RecordUsage reports no
// reservation.
const holdTTL = time.Hour

// holdStore keeps budget reservations until their usage is reported, in the
// counters backend (storage.Counters), so that any replica sharing it can
// settle a reservation another replica made, exactly once.
type holdStore interface {
	PutHold(ctx context.Context, key string, data []byte, expires time.Time) error
	TakeHold(ctx context.Context, key string) ([]byte, error)
	PeekHold(ctx context.Context, key string) ([]byte, error)
}

// heldReservation is what the counters backend holds for one decision.
type heldReservation struct {
	Reservation budget.Reservation `json:"reservation"`
	Expires     time.Time          `json:"expires"`
}

func holdKey(decisionID string) string { return "budget-hold:v1:" + decisionID }

// putHold keeps r until its usage is reported. A failure is logged and
// counted but does not change the decision: the estimate stays charged,
// which errs on the side of the budget.
func (c *Core) putHold(ctx context.Context, decisionID string, r budget.Reservation) {
	if c.holds == nil {
		return
	}
	if err := c.storeHold(ctx, decisionID, heldReservation{Reservation: r, Expires: c.now().Add(holdTTL)}); err != nil {
		c.metrics.storeError(storeOpCounters, err)
		c.log.WarnContext(ctx, "keep budget reservation for its usage report; the estimate stays charged", "decision_id", decisionID, "err", err)
	}
}

func (c *Core) storeHold(ctx context.Context, decisionID string, h heldReservation) error {
	data, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode budget reservation: %w", err)
	}
	return c.holds.PutHold(ctx, holdKey(decisionID), data, h.Expires)
}

// takeHold removes and returns the reservation of decisionID. It wraps
// ErrNoReservation when there is none (never made, already settled or
// expired); any other error is a counters fault.
func (c *Core) takeHold(ctx context.Context, decisionID string) (heldReservation, error) {
	return c.readHold(ctx, decisionID, c.holds.TakeHold)
}

// peekHold is takeHold leaving the reservation in place.
func (c *Core) peekHold(ctx context.Context, decisionID string) (heldReservation, error) {
	return c.readHold(ctx, decisionID, c.holds.PeekHold)
}

func (c *Core) readHold(ctx context.Context, decisionID string, read func(context.Context, string) ([]byte, error)) (heldReservation, error) {
	data, err := read(ctx, holdKey(decisionID))
	if errors.Is(err, storage.ErrNotFound) {
		return heldReservation{}, fmt.Errorf("decision %s: %w: it was already reconciled, is over %s old, or had no budget", decisionID, ErrNoReservation, holdTTL)
	}
	if err != nil {
		return heldReservation{}, fmt.Errorf("read budget reservation of decision %s: %w", decisionID, err)
	}
	var h heldReservation
	if err := json.Unmarshal(data, &h); err != nil {
		return heldReservation{}, fmt.Errorf("decode budget reservation of decision %s: %w", decisionID, err)
	}
	return h, nil
}

// releaseHold returns what an allowed LLM call reserved when its decision
// became a deny afterwards (the audit write failed), so an outage of the
// audit store does not spend budgets on calls that never ran. A failure
// leaves the estimate charged, and is logged and counted.
func (c *Core) releaseHold(ctx context.Context, decisionID string) {
	if c.meter == nil {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.limitTO)
	defer cancel()
	h, err := c.takeHold(lctx, decisionID)
	if errors.Is(err, ErrNoReservation) {
		return // no budget applied
	}
	if err == nil {
		err = c.meter.Release(lctx, h.Reservation)
	}
	if err != nil {
		c.metrics.storeError(storeOpCounters, err)
		c.log.WarnContext(ctx, "release the budget reservation of a call denied after it was reserved; the estimate stays charged", "decision_id", decisionID, "err", err)
	}
}
