package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := &v1.RuntimeQuery{RequestId: 42, NoCache: true}
	if err := Write(&buf, v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, in); err != nil {
		t.Fatal(err)
	}
	if err := Write(&buf, v1.RuntimeFrameTag_RUNTIME_FRAME_HEARTBEAT, &v1.RuntimeHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	tag, body, err := Read(&buf, 1024)
	if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY {
		t.Fatalf("read: %v %v", tag, err)
	}
	var out v1.RuntimeQuery
	if err := Decode(tag, body, &out); err != nil || !proto.Equal(in, &out) {
		t.Fatalf("decode: %v %v", &out, err)
	}
	if tag, body, err := Read(&buf, 1024); err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_HEARTBEAT || len(body) != 0 {
		t.Fatalf("empty body frame: %v %v %v", tag, body, err)
	}
	if _, _, err := Read(&buf, 1024); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func TestReadErrors(t *testing.T) {
	hdr := func(tag byte, n uint32) []byte {
		h := []byte{tag, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[1:], n)
		return h
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", hdr(3, 1025), ErrTooLarge},
		{"unknown tag", hdr(99, 0), ErrUnknownTag},
		{"tag zero", hdr(0, 0), ErrUnknownTag},
		{"short header", []byte{3, 0}, io.ErrUnexpectedEOF},
		{"short body", append(hdr(3, 10), 1, 2, 3), io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Read(bytes.NewReader(tc.in), 1024); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if err := Decode(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, []byte{0xff, 0xff, 0xff}, &v1.RuntimeQuery{}); !errors.Is(err, ErrGarbled) {
		t.Fatalf("garbled body: %v", err)
	}
}

// FuzzRead: no input makes Read or Decode panic or return a body over the limit.
func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	_ = Write(&buf, v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, &v1.RuntimeQuery{RequestId: 1, Check: &v1.CheckActionRequest{TraceId: "t"}})
	f.Add(buf.Bytes())
	f.Add([]byte{3, 0, 0, 0, 2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			tag, body, err := Read(r, 4096)
			if err != nil {
				return
			}
			if len(body) > 4096 {
				t.Fatalf("body of %d bytes over the limit", len(body))
			}
			_ = Decode(tag, body, &v1.RuntimeQuery{})
		}
	})
}
