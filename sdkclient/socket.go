package sdkclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// socketConn is one connection to the runtime; replies are matched to
// requests by id, so concurrent calls share it.
type socketConn struct {
	c       net.Conn
	welcome *v1.RuntimeWelcome
	wmu     sync.Mutex
	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan *v1.RuntimeReply
	err     error // set when the connection broke
	done    chan struct{}
}

func dialSocket(ctx context.Context, path string, agent *v1.AgentId) (*socketConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to runtime %s: %w", path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	// A runtime that refuses this process says why and closes before reading
	// the hello, so a failed write is reported only when no reason follows.
	werr := frame.Write(c, v1.RuntimeFrameTag_RUNTIME_FRAME_HELLO, &v1.RuntimeHello{Versions: []uint32{frame.Version}, Sdk: "go-sdkclient/1", Agent: agent})
	tag, body, err := frame.Read(r, frame.DefaultMaxBody)
	if err != nil {
		c.Close()
		if werr != nil {
			err = werr
		}
		return nil, fmt.Errorf("runtime handshake: %w", err)
	}
	switch tag {
	case v1.RuntimeFrameTag_RUNTIME_FRAME_WELCOME:
	case v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR:
		var e v1.RuntimeError
		_ = frame.Decode(tag, body, &e)
		c.Close()
		return nil, fmt.Errorf("runtime refused the connection: %s", e.GetMessage())
	default:
		c.Close()
		return nil, fmt.Errorf("runtime handshake: unexpected %s frame", tag)
	}
	var w v1.RuntimeWelcome
	if err := frame.Decode(tag, body, &w); err != nil {
		c.Close()
		return nil, fmt.Errorf("runtime handshake: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	sc := &socketConn{c: c, welcome: &w, waiting: map[uint64]chan *v1.RuntimeReply{}, done: make(chan struct{})}
	go sc.read(r)
	return sc, nil
}

func (sc *socketConn) read(r *bufio.Reader) {
	var err error
	defer func() {
		sc.mu.Lock()
		sc.err = err
		for id, ch := range sc.waiting {
			close(ch)
			delete(sc.waiting, id)
		}
		sc.mu.Unlock()
		close(sc.done)
	}()
	for {
		var tag frame.Tag
		var body []byte
		tag, body, err = frame.Read(r, int(max(sc.welcome.GetMaxFrameBytes(), frame.DefaultMaxBody)))
		if err != nil {
			return
		}
		switch tag {
		case v1.RuntimeFrameTag_RUNTIME_FRAME_REPLY:
			rep := &v1.RuntimeReply{}
			if err = frame.Decode(tag, body, rep); err != nil {
				return
			}
			sc.mu.Lock()
			ch := sc.waiting[rep.GetRequestId()]
			delete(sc.waiting, rep.GetRequestId())
			sc.mu.Unlock()
			if ch != nil {
				ch <- rep
			}
		case v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR:
			var e v1.RuntimeError
			_ = frame.Decode(tag, body, &e)
			err = fmt.Errorf("runtime closed the connection: %s", e.GetMessage())
			return
		default:
			err = fmt.Errorf("unexpected %s frame from the runtime", tag)
			return
		}
	}
}

// call sends m (whose request id set sets) and waits for its reply.
func (sc *socketConn) call(ctx context.Context, tag frame.Tag, m proto.Message, set func(uint64)) (*v1.RuntimeReply, error) {
	ch := make(chan *v1.RuntimeReply, 1)
	sc.mu.Lock()
	if sc.err != nil {
		err := sc.err
		sc.mu.Unlock()
		return nil, err
	}
	sc.next++
	id := sc.next
	sc.waiting[id] = ch
	sc.mu.Unlock()
	set(id)
	sc.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = sc.c.SetWriteDeadline(dl)
	}
	err := frame.Write(sc.c, tag, m)
	sc.wmu.Unlock()
	if err != nil {
		sc.forget(id)
		_ = sc.c.Close()
		return nil, err
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			sc.mu.Lock()
			err := sc.err
			sc.mu.Unlock()
			if err == nil {
				err = errors.New("connection to the runtime closed")
			}
			return nil, err
		}
		return rep, nil
	case <-ctx.Done():
		sc.forget(id)
		return nil, ctx.Err()
	}
}

func (sc *socketConn) forget(id uint64) {
	sc.mu.Lock()
	delete(sc.waiting, id)
	sc.mu.Unlock()
}

func (sc *socketConn) broken() bool {
	select {
	case <-sc.done:
		return true
	default:
		return false
	}
}

func (sc *socketConn) close() error { return sc.c.Close() }
