// Package frame reads and writes the runtime socket's frames: a tag byte, a
// four-byte big-endian length and a protobuf body of at most a fixed size.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// Protocol versions.
const (
	// Version is the protocol version this package speaks.
	Version = 1
	// HeaderSize is the size of a frame header.
	HeaderSize = 5
	// DefaultMaxBody is the default largest body: big enough for the
	// gateway's default 1 MiB payload limit plus the request around it.
	DefaultMaxBody = 1<<20 + 64<<10
)

// Errors a reader reports. Each one means the peer broke the protocol; the
// connection cannot continue.
var (
	// ErrTooLarge means a header announced a body over the limit.
	ErrTooLarge = errors.New("frame too large")
	// ErrUnknownTag means a header carried a tag this version does not know.
	ErrUnknownTag = errors.New("unknown frame tag")
	// ErrGarbled means a body is not the protobuf message its tag names.
	ErrGarbled = errors.New("garbled frame body")
)

// Tag is a frame's tag byte.
type Tag = v1.RuntimeFrameTag

// Read reads one frame of at most max body bytes. It returns io.EOF only
// when the stream ends cleanly between frames.
func Read(r io.Reader, max int) (Tag, []byte, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("read frame header: %w", err)
		}
		return 0, nil, err
	}
	tag := Tag(h[0])
	if _, ok := v1.RuntimeFrameTag_name[int32(tag)]; !ok || tag == v1.RuntimeFrameTag_RUNTIME_FRAME_TAG_UNSPECIFIED {
		return 0, nil, fmt.Errorf("read frame: tag %d: %w", h[0], ErrUnknownTag)
	}
	n := binary.BigEndian.Uint32(h[1:])
	if uint64(n) > uint64(max) {
		return 0, nil, fmt.Errorf("read frame: %s body of %d bytes, over the limit of %d: %w", tag, n, max, ErrTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, fmt.Errorf("read %s frame body: %w", tag, err)
	}
	return tag, body, nil
}

// Decode unmarshals a frame body into m, wrapping failures in ErrGarbled.
func Decode(tag Tag, body []byte, m proto.Message) error {
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("decode %s frame: %w: %v", tag, ErrGarbled, err)
	}
	return nil
}

// Append appends the frame for m with tag to buf and returns the result.
func Append(buf []byte, tag Tag, m proto.Message) ([]byte, error) {
	start := len(buf)
	buf = append(buf, byte(tag), 0, 0, 0, 0)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return buf[:start], fmt.Errorf("encode %s frame: %w", tag, err)
	}
	n := len(buf) - start - HeaderSize
	if uint64(n) > 0xffffffff {
		return buf[:start], fmt.Errorf("encode %s frame: body of %d bytes: %w", tag, n, ErrTooLarge)
	}
	binary.BigEndian.PutUint32(buf[start+1:], uint32(n))
	return buf, nil
}

// Write writes the frame for m with tag to w in one call.
func Write(w io.Writer, tag Tag, m proto.Message) error {
	buf, err := Append(nil, tag, m)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", tag, err)
	}
	return nil
}
