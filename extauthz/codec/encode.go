package codec

import (
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// encodeCheckResponse returns m encoded exactly as proto.Marshal encodes
// it when m is an answer of the shape the ext_authz server gives:
// a status with a code and message, and an OK response with headers to
// set and remove or a denied response with a status, headers and a body.
// It reports false for anything else (details in
// the status, dynamic metadata, query parameters, unknown fields, a nil
// element in a list), which the caller encodes with proto.Marshal.
func encodeCheckResponse(m *authv3.CheckResponse) ([]byte, bool) {
	if !plainResponse(m) {
		return nil, false
	}
	return appendResponse(make([]byte, responseSize(m)), m), true
}

// plainResponse reports whether m has only the fields this encoder writes.
func plainResponse(m *authv3.CheckResponse) bool {
	if m == nil || m.DynamicMetadata != nil || unknown(m) {
		return false
	}
	if s := m.Status; s != nil && (len(s.Details) > 0 || unknown(s)) {
		return false
	}
	switch r := m.HttpResponse.(type) {
	case nil:
		return true
	case *authv3.CheckResponse_OkResponse:
		ok := r.OkResponse
		if ok == nil {
			return true
		}
		//lint:ignore SA1019 a deprecated field is still a field this writer must not drop
		if ok.DynamicMetadata != nil || len(ok.ResponseHeadersToAdd) > 0 || len(ok.QueryParametersToSet) > 0 ||
			len(ok.QueryParametersToRemove) > 0 || unknown(ok) {
			return false
		}
		return plainHeaders(ok.Headers)
	case *authv3.CheckResponse_DeniedResponse:
		d := r.DeniedResponse
		if d == nil {
			return true
		}
		if unknown(d) || (d.Status != nil && unknown(d.Status)) {
			return false
		}
		return plainHeaders(d.Headers)
	}
	return false
}

func plainHeaders(hs []*corev3.HeaderValueOption) bool {
	for _, h := range hs {
		//lint:ignore SA1019 a deprecated field is still a field this writer must not drop
		if h == nil || h.Append != nil || unknown(h) || (h.Header != nil && unknown(h.Header)) {
			return false
		}
	}
	return true
}

func unknown(m proto.Message) bool { return len(m.ProtoReflect().GetUnknown()) > 0 }

// The size functions give the encoded size of a message's fields, without
// its own tag and length.

func responseSize(m *authv3.CheckResponse) int {
	n := 0
	if m.Status != nil {
		n += msgField(1, statusSize(m.Status))
	}
	switch r := m.HttpResponse.(type) {
	case *authv3.CheckResponse_DeniedResponse:
		n += msgField(2, deniedSize(r.DeniedResponse))
	case *authv3.CheckResponse_OkResponse:
		n += msgField(3, okSize(r.OkResponse))
	}
	return n
}

func statusSize(s *rpcstatus.Status) int {
	return varintField(1, uint64(int64(s.Code))) + stringField(2, s.Message)
}

func deniedSize(d *authv3.DeniedHttpResponse) int {
	if d == nil {
		return 0
	}
	n := 0
	if d.Status != nil {
		n += msgField(1, varintField(1, uint64(int64(d.Status.Code))))
	}
	return n + headersSize(2, d.Headers) + stringField(3, d.Body)
}

func okSize(ok *authv3.OkHttpResponse) int {
	if ok == nil {
		return 0
	}
	n := headersSize(2, ok.Headers)
	for _, h := range ok.HeadersToRemove {
		n += protowire.SizeTag(5) + protowire.SizeBytes(len(h))
	}
	return n
}

func headersSize(num protowire.Number, hs []*corev3.HeaderValueOption) int {
	n := 0
	for _, h := range hs {
		n += msgField(num, optionSize(h))
	}
	return n
}

func optionSize(h *corev3.HeaderValueOption) int {
	n := 0
	if h.Header != nil {
		n += msgField(1, valueSize(h.Header))
	}
	return n + varintField(3, uint64(int64(h.AppendAction))) + varintField(4, protowire.EncodeBool(h.KeepEmptyValue))
}

func valueSize(v *corev3.HeaderValue) int {
	n := stringField(1, v.Key) + stringField(2, v.Value)
	if len(v.RawValue) > 0 {
		n += protowire.SizeTag(3) + protowire.SizeBytes(len(v.RawValue))
	}
	return n
}

// msgField is the size of a message field whose message is size bytes.
func msgField(num protowire.Number, size int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(size)
}

// stringField is the size of a proto3 string field: nothing when empty.
func stringField(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

// varintField is the size of a proto3 varint field: nothing when zero.
func varintField(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

// writer fills buf from the end: a message's fields are written last to
// first, so each message's length is known when its tag is written, and no
// size is computed twice.
type writer struct {
	buf []byte
	i   int // buf[i:] is written
}

func (w *writer) raw(s string) {
	w.i -= len(s)
	copy(w.buf[w.i:], s)
}

func (w *writer) varint(v uint64) {
	if v < 0x80 { // every tag here, and most lengths
		w.i--
		w.buf[w.i] = byte(v)
		return
	}
	w.i -= protowire.SizeVarint(v)
	protowire.AppendVarint(w.buf[w.i:w.i], v)
}

func (w *writer) tag(num protowire.Number, typ protowire.Type) {
	w.varint(protowire.EncodeTag(num, typ))
}

// string writes a proto3 string field: nothing when empty.
func (w *writer) string(num protowire.Number, s string) {
	if s == "" {
		return
	}
	w.raw(s)
	w.varint(uint64(len(s)))
	w.tag(num, protowire.BytesType)
}

// uint writes a proto3 varint field: nothing when zero.
func (w *writer) uint(num protowire.Number, v uint64) {
	if v == 0 {
		return
	}
	w.varint(v)
	w.tag(num, protowire.VarintType)
}

// message writes the length and tag of a message field whose fields were
// written since the writer stood at end.
func (w *writer) message(num protowire.Number, end int) {
	w.varint(uint64(end - w.i))
	w.tag(num, protowire.BytesType)
}

// appendResponse writes m in field-number order, as protobuf-go does.
func appendResponse(b []byte, m *authv3.CheckResponse) []byte {
	w := writer{buf: b[:cap(b)], i: cap(b)}
	switch r := m.HttpResponse.(type) {
	case *authv3.CheckResponse_OkResponse:
		end := w.i
		if ok := r.OkResponse; ok != nil {
			for _, h := range slices.Backward(ok.HeadersToRemove) {
				w.string(5, h)
			}
			w.headers(2, ok.Headers)
		}
		w.message(3, end)
	case *authv3.CheckResponse_DeniedResponse:
		end := w.i
		if d := r.DeniedResponse; d != nil {
			w.string(3, d.Body)
			w.headers(2, d.Headers)
			if d.Status != nil {
				end := w.i
				w.uint(1, uint64(int64(d.Status.Code)))
				w.message(1, end)
			}
		}
		w.message(2, end)
	}
	if st := m.Status; st != nil {
		end := w.i
		w.string(2, st.Message)
		w.uint(1, uint64(int64(st.Code)))
		w.message(1, end)
	}
	return w.buf[w.i:]
}

func (w *writer) headers(num protowire.Number, hs []*corev3.HeaderValueOption) {
	for _, h := range slices.Backward(hs) {
		end := w.i
		w.uint(4, protowire.EncodeBool(h.KeepEmptyValue))
		w.uint(3, uint64(int64(h.AppendAction)))
		if v := h.Header; v != nil {
			end := w.i
			if len(v.RawValue) > 0 {
				w.i -= len(v.RawValue)
				copy(w.buf[w.i:], v.RawValue)
				w.varint(uint64(len(v.RawValue)))
				w.tag(3, protowire.BytesType)
			}
			w.string(2, v.Value)
			w.string(1, v.Key)
			w.message(1, end)
		}
		w.message(num, end)
	}
}
