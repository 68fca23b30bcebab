package runtime

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime/buffer"
)

// forwardBatch is the most events sent in one ReportEvents call.
const forwardBatch = 256

// forward sends buffered events to the gateway in order and deletes them
// once acknowledged. Event ids are the buffer's sequence numbers under its
// stable reporter id, so a batch resent after a crash or a lost reply is
// deduplicated by the gateway: every event is appended exactly once.
func (rt *Runtime) forward(ctx context.Context) {
	backoff := 100 * time.Millisecond
	batch := forwardBatch
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		entries, err := rt.buf.Peek(ctx, batch)
		if err != nil {
			if ctx.Err() == nil {
				rt.log.Error("read event buffer", "err", err)
			}
			sleep(ctx, time.Second)
			continue
		}
		if len(entries) == 0 {
			select {
			case <-ctx.Done():
			case <-rt.buf.Written():
			case <-tick.C:
			}
			continue
		}
		err = rt.send(ctx, entries)
		switch {
		case err == nil:
			backoff, batch = 100*time.Millisecond, forwardBatch
			if aerr := rt.buf.Ack(context.WithoutCancel(ctx), entries[len(entries)-1].Seq); aerr != nil {
				rt.log.Error("ack forwarded events; they will be resent and deduplicated", "err", aerr)
			}
		case status.Code(err) == codes.InvalidArgument && len(entries) > 1:
			batch = 1 // find the event the gateway rejects
		case status.Code(err) == codes.InvalidArgument:
			rt.log.Error("gateway rejects a buffered event; dropping it", "event_id", entries[0].Event.GetEventId(), "err", err)
			_ = rt.buf.Ack(context.WithoutCancel(ctx), entries[0].Seq)
		default:
			if ctx.Err() != nil {
				return
			}
			if rt.reachable.Swap(false) {
				rt.log.Warn("gateway unreachable; buffering audit events on disk", "err", err)
			}
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

func (rt *Runtime) send(ctx context.Context, entries []buffer.Entry) error {
	req := &v1.ReportEventsRequest{Reporter: rt.buf.Reporter(), Events: make([]*v1.ReportedEvent, len(entries))}
	for i, e := range entries {
		req.Events[i] = e.Event
	}
	if drops := rt.drops.Load(); drops != nil {
		req.KernelDrops = (*drops)()
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cctx, _ = rt.withTokens(cctx)
	resp, err := rt.audit.ReportEvents(cctx, req)
	if err != nil {
		return err
	}
	if !rt.reachable.Swap(true) {
		rt.log.Info("gateway reachable again; forwarding buffered events")
	}
	rt.log.Debug("forwarded events", "appended", resp.GetAppended(), "duplicates", resp.GetDuplicates())
	return nil
}

// subscribe follows the gateway's invalidation stream, resuming after the
// last sequence number seen. The decision cache serves only while the stream
// is up: with no stream, a cached answer could outlive the policy behind it.
func (rt *Runtime) subscribe(ctx context.Context) {
	var last int64
	backoff := 100 * time.Millisecond
	agents := make([]*v1.AgentId, len(rt.agents))
	for i, a := range rt.agents {
		agents[i] = a.pid
	}
	for ctx.Err() == nil {
		err := rt.follow(ctx, &last, agents)
		if rt.cache.live.Load() {
			// It was subscribed: a fresh drop (its replica died, say) is
			// retried soon, whatever earlier failures did to the backoff.
			backoff = 100 * time.Millisecond
		}
		rt.cache.setLive(false)
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			rt.log.Warn("the gateway serves no InvalidationService; the decision cache is off", "err", err)
			sleep(ctx, 30*time.Second)
			continue
		}
		rt.log.Info("invalidation stream ended; decision cache off until it reconnects", "last_seq", last, "err", err)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (rt *Runtime) follow(ctx context.Context, last *int64, agents []*v1.AgentId) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if tctx, proven := rt.withTokens(sctx); len(proven) > 0 {
		// With credentials, the subscription is for the agents they prove
		// (the gateway refuses agents without one).
		sctx, agents = tctx, proven
	} else if rt.opts.Register {
		return errors.New("no agent has registered yet: subscribing once one has a credential")
	}
	stream, err := rt.inval.Subscribe(sctx, &v1.SubscribeRequest{Subscriber: rt.buf.Reporter(), LastSeqSeen: *last, Agents: agents})
	if err != nil {
		return err
	}
	// The gateway answers with a header once the subscription is in place
	// (and from which sequence number): only then can cached answers be
	// trusted to be invalidated.
	hdr, err := stream.Header()
	if err != nil {
		return err
	}
	if v := hdr.Get(subscribedSeqHeader); len(v) == 1 && *last == 0 {
		if seq, err := strconv.ParseInt(v[0], 10, 64); err == nil {
			*last = seq
		}
	}
	rt.cache.setLive(true)
	rt.log.Debug("invalidation stream connected", "after_seq", *last)
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("stream closed by the gateway")
			}
			return err
		}
		if ev.GetSeq() > *last {
			*last = ev.GetSeq()
		}
		switch ev.GetType() {
		case v1.InvalidationEvent_TYPE_APPROVAL_RESOLVED, v1.InvalidationEvent_TYPE_AGENT_REGISTERED:
			// pending and approved answers are never cached
		default:
			rt.cache.invalidate()
			rt.log.Debug("decision cache invalidated", "seq", ev.GetSeq(), "type", ev.GetType().String())
		}
	}
}

// subscribedSeqHeader is the header the gateway's Subscribe sends once the
// subscription is in place (gateway.SubscribedSeqHeader).
const subscribedSeqHeader = "aa-subscribed-seq"

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
