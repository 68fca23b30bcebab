package codec

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fixtures are the contract tests' CheckRequests, shaped as Envoy sends
// them, encoded as Envoy would.
func fixtures(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob("../testdata/requests/*.json")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no request fixtures: %v", err)
	}
	out := make(map[string][]byte, len(paths))
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var m authv3.CheckRequest
		if err := protojson.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		b, err := proto.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

// full is a request with every field the fast reader knows set.
func full() *authv3.CheckRequest {
	peer := func(ip string, port uint32) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Protocol: corev3.SocketAddress_UDP, Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
				ResolverName: "r", Ipv4Compat: true, NetworkNamespaceFilepath: "/run/netns/x",
			}}},
			Service: "svc", Labels: map[string]string{"app": "agent", "": "empty key"}, Principal: "spiffe://td/ns/a", Certificate: "cert",
		}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      peer("10.0.0.1", 41000),
		Destination: peer("10.0.0.2", 443),
		Request: &authv3.AttributeContext_Request{
			Time: &timestamppb.Timestamp{Seconds: -5, Nanos: 7},
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "1", Method: "POST", Headers: map[string]string{":path": "/v1", "empty": ""},
				Path: "/v1?x", Host: "api.example.com", Scheme: "https", Query: "x", Fragment: "f", Size: 12,
				Protocol: "HTTP/2", Body: `{"model":"gpt"}`, RawBody: []byte{0, 0xff, 1},
				HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "a", Value: "b"}, {Key: "c", RawValue: []byte{0xff}}}},
			},
		},
		ContextExtensions:    map[string]string{"org": "acme", "token": strings.Repeat("t", 200)},
		MetadataContext:      &corev3.Metadata{},
		RouteMetadataContext: &corev3.Metadata{},
		TlsSession:           &authv3.AttributeContext_TLSSession{Sni: "api.example.com"},
	}}
}

// check decodes b both ways and fails unless they agree; it reports
// whether the fast reader took it.
func check(t testing.TB, b []byte) bool {
	t.Helper()
	var want authv3.CheckRequest
	wantErr := proto.Unmarshal(b, &want)
	var got authv3.CheckRequest
	fast := decodeCheckRequest(b, &got)
	if !fast {
		return false
	}
	if wantErr != nil {
		t.Fatalf("the fast reader took %x, which proto.Unmarshal rejects: %v", b, wantErr)
	}
	if !proto.Equal(&got, &want) {
		t.Fatalf("decoded %x as\n%v\nwant\n%v", b, &got, &want)
	}
	return true
}

func TestFixturesTakeTheFastPath(t *testing.T) {
	for name, b := range fixtures(t) {
		if !check(t, b) {
			t.Errorf("%s went to proto.Unmarshal", name)
		}
	}
	b, err := proto.Marshal(full())
	if err != nil {
		t.Fatal(err)
	}
	if !check(t, b) {
		t.Error("the request with every known field went to proto.Unmarshal")
	}
}

func TestLongRequestCopiesEachString(t *testing.T) {
	m := full()
	m.Attributes.Request.Http.Body = strings.Repeat("b", shareLimit)
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !check(t, b) {
		t.Fatal("a long request went to proto.Unmarshal")
	}
}

// TestUnknownShapesFallBack covers inputs the fast reader must leave to
// proto.Unmarshal: it must not claim them.
func TestUnknownShapesFallBack(t *testing.T) {
	base, err := proto.Marshal(full())
	if err != nil {
		t.Fatal(err)
	}
	filled := full()
	filled.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": {}}}
	meta, err := proto.Marshal(filled)
	if err != nil {
		t.Fatal(err)
	}
	named := full()
	named.Attributes.Source.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "http"}
	port, err := proto.Marshal(named)
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(inner []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), inner)
	}
	cases := map[string][]byte{
		"unknown top-level field":  protowire.AppendVarint(protowire.AppendTag(append([]byte{}, base...), 9, protowire.VarintType), 1),
		"attributes twice":         append(append([]byte{}, base...), base...),
		"filled metadata context":  meta,
		"named port":               port,
		"invalid UTF-8 in a host":  attrs(protowire.AppendString(protowire.AppendTag(nil, 10, protowire.BytesType), "\x0a\x01\xff")),
		"wrong wire type":          attrs(protowire.AppendVarint(protowire.AppendTag(nil, 10, protowire.VarintType), 3)),
		"fixed64 field":            attrs(protowire.AppendFixed64(protowire.AppendTag(nil, 4, protowire.Fixed64Type), 3)),
		"truncated":                base[:len(base)-3],
		"length past the end":      []byte{0x0a, 0x05, 0x0a},
		"field number zero":        []byte{0x02, 0x00},
		"group":                    []byte{0x0b, 0x0c},
		"unknown field in a entry": attrs(protowire.AppendBytes(protowire.AppendTag(nil, 10, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1))),
	}
	for name, b := range cases {
		if check(t, b) {
			t.Errorf("%s: the fast reader took it", name)
		}
	}
}

// FuzzDecode checks that whatever the fast reader accepts, it decodes as
// proto.Unmarshal does, and that the codec decodes every input into a
// Request emptied after each one (as the pool does) as it decodes it into
// a new CheckRequest: nothing of an earlier input shows in a later one.
func FuzzDecode(f *testing.F) {
	for _, b := range fixtures(f) {
		f.Add(b)
	}
	if b, err := proto.Marshal(full()); err == nil {
		f.Add(b)
	}
	c := New()
	reused := new(Request)
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
		var want authv3.CheckRequest
		wantErr := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &want)
		gotErr := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, reused)
		if (gotErr == nil) != (wantErr == nil) || (gotErr == nil && !proto.Equal(&reused.CheckRequest, &want)) {
			t.Fatalf("%x into a reused Request: %v, %v; into a new CheckRequest: %v, %v", b, gotErr, &reused.CheckRequest, wantErr, &want)
		}
		reused.empty()
	})
}

// TestCodecDecodesEveryMessage checks the codec end to end: a CheckRequest
// by the fast reader or, when it declines, by protobuf; other messages by
// grpc-go's codec. The message it is handed is reset first, as protobuf's
// Unmarshal resets it.
func TestCodecDecodesEveryMessage(t *testing.T) {
	c := New()
	for name, b := range fixtures(t) {
		got := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{ContextExtensions: map[string]string{"stale": "x"}}}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var want authv3.CheckRequest
		if err := proto.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, &want) {
			t.Fatalf("%s: got %v, want %v", name, got, &want)
		}
	}
	// A request in two buffers, one the fast reader declines, and a reply.
	m := full()
	m.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": {}}}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.SlowRequests(); n != 0 {
		t.Fatalf("%d fixtures decoded slowly", n)
	}
	var got authv3.CheckRequest
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:10]), mem.SliceBuffer(b[10:])}, &got); err != nil || !proto.Equal(&got, m) {
		t.Fatalf("split, filled metadata: %v %v", err, &got)
	}
	if n := c.SlowRequests(); n != 1 {
		t.Fatalf("%d requests counted as decoded slowly, want 1", n)
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0x0a, 0x05})}, &got); err == nil {
		t.Fatal("a truncated request decoded")
	}
	resp := &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{HeadersToRemove: []string{"x"}}}}
	enc, err := c.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var back authv3.CheckResponse
	if err := c.Unmarshal(enc, &back); err != nil || !proto.Equal(&back, resp) {
		t.Fatalf("response round trip: %v %v", err, &back)
	}
	if c.Name() != "proto" {
		t.Fatalf("name %q", c.Name())
	}
}

// TestRequestPool: a pooled Request decodes every fixture as proto.Unmarshal
// does, one after another through the pool, so nothing of a released
// request shows in the next; one the fast reader declines decodes too;
// grpc-go's own codec decodes into a Request as well.
func TestRequestPool(t *testing.T) {
	c := New()
	slow := full()
	slow.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": {}}}
	sb, err := proto.Marshal(slow)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := proto.Marshal(full())
	if err != nil {
		t.Fatal(err)
	}
	all := fixtures(t)
	all["slow"], all["full"] = sb, fb
	for round := range 3 {
		for name, b := range all {
			var want authv3.CheckRequest
			if err := proto.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			r := NewRequest()
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r); err != nil {
				t.Fatalf("round %d, %s: %v", round, name, err)
			}
			if !proto.Equal(&r.CheckRequest, &want) {
				t.Fatalf("round %d, %s: got %v, want %v", round, name, &r.CheckRequest, &want)
			}
			if got := proto.Clone(&r.CheckRequest); !proto.Equal(got, &want) {
				t.Fatalf("round %d, %s: a clone differs", round, name)
			}
			r.Release()
		}
	}
	r := NewRequest()
	defer r.Release()
	if err := c.base.Unmarshal(mem.BufferSlice{mem.SliceBuffer(fb)}, r); err != nil || !proto.Equal(&r.CheckRequest, full()) {
		t.Fatalf("grpc-go's codec into a Request: %v %v", err, &r.CheckRequest)
	}
}

// TestRequestKeepsItsMaps: Release (empty, without the pool) empties the headers and context
// extensions maps the fast reader made and keeps them for the next request,
// which the reader fills instead of making new ones; a map that grew over
// maxSpareEntries is dropped.
func TestRequestKeepsItsMaps(t *testing.T) {
	b, err := proto.Marshal(full())
	if err != nil {
		t.Fatal(err)
	}
	r := new(Request)
	if err := New().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r); err != nil {
		t.Fatal(err)
	}
	hdr, ext := r.GetAttributes().GetRequest().GetHttp().GetHeaders(), r.GetAttributes().GetContextExtensions()
	if len(hdr) == 0 || len(ext) == 0 {
		t.Fatal("the full request has no headers or context extensions")
	}
	r.empty()
	if len(hdr) != 0 || len(ext) != 0 {
		t.Fatalf("Release left %d headers and %d context extensions in the kept maps", len(hdr), len(ext))
	}
	if !sameMap(r.msgs.spare[0], hdr) || !sameMap(r.msgs.spare[1], ext) {
		t.Fatal("Release did not keep the request's maps")
	}
	var got authv3.CheckRequest
	if !decodeCheckRequestInto(b, &got, &r.msgs) {
		t.Fatal("the full request went to proto.Unmarshal")
	}
	if !sameMap(got.GetAttributes().GetRequest().GetHttp().GetHeaders(), hdr) || !sameMap(got.GetAttributes().GetContextExtensions(), ext) {
		t.Fatal("the next request did not reuse the kept maps")
	}
	if !proto.Equal(&got, full()) {
		t.Fatalf("decoded into kept maps as %v", &got)
	}

	big := full()
	for i := range maxSpareEntries + 1 {
		big.Attributes.Request.Http.Headers[fmt.Sprintf("x-h%d", i)] = "v"
	}
	if b, err = proto.Marshal(big); err != nil {
		t.Fatal(err)
	}
	r = new(Request)
	if err := New().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r); err != nil {
		t.Fatal(err)
	}
	r.empty()
	if r.msgs.spare[0] != nil || r.msgs.spare[1] == nil {
		t.Fatal("Release kept a map of over maxSpareEntries headers, or dropped the small one")
	}
}

// sameMap reports whether a and b are the same map (not equal ones).
func sameMap(a, b map[string]string) bool {
	if a == nil || b == nil {
		return false
	}
	a["\x00probe"] = "x"
	_, ok := b["\x00probe"]
	delete(a, "\x00probe")
	return ok
}

// BenchmarkDecode compares the fast reader with proto.Unmarshal on the
// contract tests' allowed request.
//
//	go test ./extauthz/codec -run '^$' -bench Decode -benchmem
func BenchmarkDecode(b *testing.B) {
	raw := fixtures(b)["allowed_host.json"]
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m authv3.CheckRequest
			if !decodeCheckRequest(raw, &m) {
				b.Fatal("declined")
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m authv3.CheckRequest
			if err := proto.Unmarshal(raw, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// answers are responses of the shapes the ext_authz server gives.
func answers() map[string]*authv3.CheckResponse {
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	return map[string]*authv3.CheckResponse{
		"allowed": {Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:         []*corev3.HeaderValueOption{set("x-aa-decision", "allow"), set("x-aa-decision-id", "01JDX"), set("authorization", "Bearer ${KEY}")},
			HeadersToRemove: []string{"x-aa-agent-id", "x-aa-token", "x-api-key"},
		}}},
		"denied": {Status: &rpcstatus.Status{Code: 7, Message: "host not allowed"}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Headers: []*corev3.HeaderValueOption{set("content-type", "application/json"), {Header: &corev3.HeaderValue{Key: "raw", RawValue: []byte{0, 0xff}}, KeepEmptyValue: true}},
			Body:    `{"decision":"deny"}`,
		}}},
		"empty":        {},
		"nil ok":       {HttpResponse: &authv3.CheckResponse_OkResponse{}},
		"nil denied":   {HttpResponse: &authv3.CheckResponse_DeniedResponse{}},
		"empty status": {Status: &rpcstatus.Status{}},
		"negative":     {Status: &rpcstatus.Status{Code: -1}},
	}
}

func TestEncodeMatchesProtobuf(t *testing.T) {
	for name, m := range answers() {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := encodeCheckResponse(m)
		if !ok {
			t.Errorf("%s: declined", name)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: encoded\n%x\nwant\n%x", name, got, want)
		}
	}
	if _, ok := encodeCheckResponse(nil); ok {
		t.Error("a nil response was encoded")
	}
}

// TestEncodeEveryField sets each field of each message in the answers, one
// at a time, to a value that is not its default, fields added to these
// types by later versions of go-control-plane included. The writer must
// either decline the response or write what proto.Marshal writes: a field
// it does not know is never dropped.
func TestEncodeEveryField(t *testing.T) {
	taken, declined := 0, 0
	for name, a := range answers() {
		for _, v := range variants(a.ProtoReflect()) {
			m := v.Interface().(*authv3.CheckResponse)
			want, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := encodeCheckResponse(m)
			if !ok {
				declined++
				continue
			}
			taken++
			if !bytes.Equal(got, want) {
				t.Errorf("%s: %v encoded\n%x\nwant\n%x", name, m, got, want)
			}
		}
	}
	if taken < 40 || declined < 20 {
		t.Fatalf("the variants are too few to mean anything: %d written, %d declined", taken, declined)
	}
}

// variants returns copies of m, each with one field set somewhere in it:
// every field of m itself, an unknown field, and the variants of every
// message m holds.
func variants(m protoreflect.Message) []protoreflect.Message {
	var out []protoreflect.Message
	clone := func() protoreflect.Message { return proto.Clone(m.Interface()).ProtoReflect() }
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		c := clone()
		setSample(c, fields.Get(i))
		out = append(out, c)
	}
	c := clone()
	c.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
	out = append(out, c)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap() || fd.Message() == nil:
		case fd.IsList():
			for j := range v.List().Len() {
				for _, sub := range variants(v.List().Get(j).Message()) {
					c := clone()
					c.Mutable(fd).List().Set(j, protoreflect.ValueOfMessage(sub))
					out = append(out, c)
				}
			}
		case !v.Message().IsValid(): // a nil message in a oneof
		default:
			for _, sub := range variants(v.Message()) {
				c := clone()
				c.Set(fd, protoreflect.ValueOfMessage(sub))
				out = append(out, c)
			}
		}
		return true
	})
	return out
}

// setSample sets fd in m to a value other than its default (an element
// added to a list or map, an empty message where there was none).
func setSample(m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	switch {
	case fd.IsList():
		l := m.Mutable(fd).List()
		if fd.Message() != nil {
			l.Append(protoreflect.ValueOfMessage(l.NewElement().Message()))
		} else {
			l.Append(sample(fd))
		}
	case fd.IsMap():
		mp := m.Mutable(fd).Map()
		v := mp.NewValue()
		if fd.MapValue().Message() == nil {
			v = sample(fd.MapValue())
		}
		mp.Set(sample(fd.MapKey()).MapKey(), v)
	case fd.Message() != nil:
		if !m.Has(fd) {
			m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
		}
	default:
		m.Set(fd, sample(fd))
	}
}

func sample(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(fd.Enum().Values().Get(fd.Enum().Values().Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(-3)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-3)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("sample")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{0xff})
	}
	panic(fmt.Sprintf("no sample for %v", fd.Kind()))
}

// BenchmarkEncode compares the fast writer with proto.Marshal on the
// allowed answer.
//
//	go test ./extauthz/codec -run '^$' -bench Encode -benchmem
func BenchmarkEncode(b *testing.B) {
	m := answers()["allowed"]
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := encodeCheckResponse(m); !ok {
				b.Fatal("declined")
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := proto.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
