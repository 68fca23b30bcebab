package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// handshakeTimeout bounds the time from accept to a complete RuntimeHello.
const handshakeTimeout = 5 * time.Second

func (rt *Runtime) accept(ctx context.Context, a *agentState) {
	for {
		c, err := a.listener.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			rt.log.Warn("accept on agent socket", "agent", a.ID.String(), "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		rt.conns.Add(1)
		go func() {
			defer rt.conns.Done()
			rt.serveConn(ctx, a, c)
		}()
	}
}

// peer reads the connecting process's credentials from the kernel.
func peer(c *net.UnixConn) (*syscall.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("read peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("read peer credentials: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("read peer credentials: %w", serr)
	}
	return cred, nil
}

// conn is one SDK connection.
type conn struct {
	rt    *Runtime
	agent *agentState
	c     *net.UnixConn
	wmu   sync.Mutex
	wbuf  []byte
	pid   int32
}

// refuse logs why a connection is closed and tells the peer, best effort.
func (cn *conn) refuse(code v1.RuntimeErrorCode, reason string, args ...any) {
	cn.rt.log.Warn("closing agent connection: "+reason, append([]any{"agent", cn.agent.ID.String(), "peer_pid", cn.pid}, args...)...)
	_ = cn.c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = cn.write(v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR, &v1.RuntimeError{Code: code, Message: reason})
}

func (cn *conn) write(tag frame.Tag, m proto.Message) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	var err error
	cn.wbuf, err = frame.Append(cn.wbuf[:0], tag, m)
	if err != nil {
		return err
	}
	_, err = cn.c.Write(cn.wbuf)
	return err
}

func (rt *Runtime) serveConn(ctx context.Context, a *agentState, c *net.UnixConn) {
	defer c.Close()
	cn := &conn{rt: rt, agent: a, c: c}
	cred, err := peer(c)
	if err != nil {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, "cannot identify the peer", "err", err)
		return
	}
	cn.pid = cred.Pid
	if int(cred.Uid) != a.UID {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL,
			fmt.Sprintf("peer uid %d is not the agent's uid %d", cred.Uid, a.UID), "peer_uid", cred.Uid)
		return
	}
	if a.Group != nil && !a.Group.Contains(int(cred.Pid)) {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL,
			fmt.Sprintf("peer pid %d is not in the agent's cgroup %s", cred.Pid, a.Group.Path))
		return
	}
	r := bufio.NewReaderSize(c, 16<<10)
	if !cn.handshake(r) {
		return
	}
	// Close the socket when the runtime stops, unblocking the read below.
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	sem := make(chan struct{}, rt.opts.MaxInflight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		tag, body, err := frame.Read(r, rt.opts.MaxFrame)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
			case ctx.Err() != nil:
			default:
				cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, err.Error())
			}
			return
		}
		req, err := decodeRequest(tag, body)
		if err != nil {
			cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, err.Error())
			return
		}
		sem <- struct{}{}
		inflight.Add(1)
		go func() {
			defer func() { <-sem; inflight.Done() }()
			reply := rt.handle(ctx, a, req)
			if err := cn.write(v1.RuntimeFrameTag_RUNTIME_FRAME_REPLY, reply); err != nil {
				rt.log.Debug("write reply", "agent", a.ID.String(), "err", err)
			}
		}()
	}
}

// handshake reads RuntimeHello and answers RuntimeWelcome.
func (cn *conn) handshake(r *bufio.Reader) bool {
	rt, a := cn.rt, cn.agent
	_ = cn.c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	tag, body, err := frame.Read(r, 64<<10)
	if err != nil {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, "handshake: "+err.Error())
		return false
	}
	if tag != v1.RuntimeFrameTag_RUNTIME_FRAME_HELLO {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, fmt.Sprintf("handshake: first frame is %s, not RUNTIME_FRAME_HELLO", tag))
		return false
	}
	var h v1.RuntimeHello
	if err := frame.Decode(tag, body, &h); err != nil {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL, "handshake: "+err.Error())
		return false
	}
	if !slices.Contains(h.GetVersions(), frame.Version) {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL,
			fmt.Sprintf("handshake: no common protocol version: the SDK speaks %v, the runtime %d; upgrade the SDK or the runtime", h.GetVersions(), frame.Version))
		return false
	}
	if h.GetAgent() != nil && !proto.Equal(h.GetAgent(), a.pid) {
		cn.refuse(v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_PROTOCOL,
			fmt.Sprintf("handshake: this socket serves agent %s, not %s/%s/%s", a.ID.String(), h.GetAgent().GetOrgId(), h.GetAgent().GetTeamId(), h.GetAgent().GetAgentId()))
		return false
	}
	_ = cn.c.SetReadDeadline(time.Time{})
	rt.log.Debug("agent connected", "agent", a.ID.String(), "peer_pid", cn.pid, "sdk", h.GetSdk())
	return cn.write(v1.RuntimeFrameTag_RUNTIME_FRAME_WELCOME, &v1.RuntimeWelcome{
		Version: frame.Version, Agent: a.pid, MaxFrameBytes: uint32(rt.opts.MaxFrame),
		HeartbeatInterval: durationpb.New(rt.opts.Heartbeat), Runtime: "aa-runtime/" + rt.opts.Version,
	}) == nil
}

// decodeRequest decodes an SDK frame after the handshake.
func decodeRequest(tag frame.Tag, body []byte) (proto.Message, error) {
	var m proto.Message
	switch tag {
	case v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY:
		m = &v1.RuntimeQuery{}
	case v1.RuntimeFrameTag_RUNTIME_FRAME_EVENTS:
		m = &v1.RuntimeEvents{}
	case v1.RuntimeFrameTag_RUNTIME_FRAME_APPROVAL:
		m = &v1.RuntimeApproval{}
	case v1.RuntimeFrameTag_RUNTIME_FRAME_USAGE:
		m = &v1.RuntimeUsage{}
	case v1.RuntimeFrameTag_RUNTIME_FRAME_HEARTBEAT:
		m = &v1.RuntimeHeartbeat{}
	default:
		return nil, fmt.Errorf("unexpected %s frame after the handshake", tag)
	}
	if err := frame.Decode(tag, body, m); err != nil {
		return nil, err
	}
	return m, nil
}
