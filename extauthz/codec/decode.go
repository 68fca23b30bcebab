package codec

import (
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// shareLimit is the largest message whose strings are cut from one copy of
// the whole message. Longer ones (a request with its body) copy each string
// on its own, so that a string kept after the check (an agent id in a map,
// say) never pins a large body in memory.
const shareLimit = 4 << 10

// decodeCheckRequest resets m and fills it from buf and reports
// whether it could. It reads the fields Envoy's ext_authz filter sends
// (addresses, principals, the HTTP request and its headers, context
// extensions, empty metadata contexts, the TLS SNI) exactly as
// proto.Unmarshal would. Anything else, from an unknown field to invalid
// UTF-8, a truncated message or a message field sent twice (which protobuf
// merges), makes it give up: the caller then decodes with proto.Unmarshal,
// which resets m first, so every input decodes as protobuf-go decodes it.
func decodeCheckRequest(buf []byte, m *authv3.CheckRequest) bool {
	return decodeCheckRequestInto(buf, m, new(typical))
}

// decodeCheckRequestInto is decodeCheckRequest with the messages of a
// typical request in msgs, which must be zero.
func decodeCheckRequestInto(buf []byte, m *authv3.CheckRequest, msgs *typical) bool {
	m.Reset()
	d := decoder{buf: buf, msgs: msgs}
	if len(buf) <= shareLimit {
		d.str = string(buf)
	}
	var seen uint32
	return d.fields(0, len(buf), func(f field) bool {
		if f.num != 1 || !d.once(&seen, f) {
			return false
		}
		m.Attributes = &d.msgs.attrs
		return d.attributes(f, m.Attributes)
	})
}

// decoder reads one message. When str is set it is a copy of buf, and
// strings are cut from it; otherwise each string is copied from buf.
type decoder struct {
	buf  []byte
	str  string
	msgs *typical
}

// typical holds the messages of a typical request, so that they cost one
// allocation between them. Each is used at most once: the decoder gives up
// on a message field sent twice.
type typical struct {
	attrs   authv3.AttributeContext
	peers   [2]peerMsgs // source, destination
	request authv3.AttributeContext_Request
	http    authv3.AttributeContext_HttpRequest
	time    timestamppb.Timestamp
	meta    [2]corev3.Metadata // metadata_context, route_metadata_context
	// spare are empty maps for the request's headers and context
	// extensions, kept by a pooled Request from an earlier request.
	spare [2]map[string]string
}

// peerMsgs are the messages of a peer with a socket address.
type peerMsgs struct {
	peer authv3.AttributeContext_Peer
	addr corev3.Address
	sock corev3.Address_SocketAddress
	sa   corev3.SocketAddress
	port corev3.SocketAddress_PortValue
}

// field is one field of a message: its number and wire type, and its value
// (a varint) or the bounds of its bytes in the decoder's buffer.
type field struct {
	num    protowire.Number
	typ    protowire.Type
	v      uint64
	lo, hi int
}

// fields calls fn for every field in buf[lo:hi] and reports whether the
// bytes were well formed and fn accepted every field. Only varint and
// length-delimited fields are read: nothing this decoder accepts has
// another wire type.
func (d *decoder) fields(lo, hi int, fn func(field) bool) bool {
	for i := lo; i < hi; {
		var f field
		if c := d.buf[i]; c < 0x80 { // a one-byte tag: fields 1 to 15
			f.num, f.typ = protowire.Number(c>>3), protowire.Type(c&7)
			if f.num == 0 {
				return false
			}
			i++
		} else {
			num, typ, n := protowire.ConsumeTag(d.buf[i:hi])
			if n < 0 {
				return false
			}
			f.num, f.typ = num, typ
			i += n
		}
		switch f.typ {
		case protowire.VarintType:
			v, n := d.varintAt(i, hi)
			if n < 0 {
				return false
			}
			f.v, i = v, i+n
		case protowire.BytesType:
			l, n := d.varintAt(i, hi)
			if n < 0 || l > uint64(hi-i-n) {
				return false
			}
			f.lo = i + n
			f.hi = f.lo + int(l)
			i = f.hi
		default:
			return false
		}
		if !fn(f) {
			return false
		}
	}
	return true
}

// varintAt reads the varint at buf[i:hi] and its length, negative when
// it is malformed.
func (d *decoder) varintAt(i, hi int) (uint64, int) {
	if i < hi && d.buf[i] < 0x80 {
		return uint64(d.buf[i]), 1
	}
	return protowire.ConsumeVarint(d.buf[i:hi])
}

// once reports whether f is a length-delimited field not seen before in
// its message, and marks it seen. A message field sent twice is merged by
// protobuf, which this decoder leaves to proto.Unmarshal.
func (d *decoder) once(seen *uint32, f field) bool {
	bit := uint32(1) << (uint(f.num) & 31)
	if f.typ != protowire.BytesType || *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// string returns f as a string, valid UTF-8 as proto3 requires.
func (d *decoder) string(f field, s *string) bool {
	if f.typ != protowire.BytesType {
		return false
	}
	var v string
	if d.str != "" {
		v = d.str[f.lo:f.hi]
	} else {
		v = string(d.buf[f.lo:f.hi])
	}
	if !utf8.ValidString(v) {
		return false
	}
	*s = v
	return true
}

// varint returns f's value when f is a varint.
func (d *decoder) varint(f field, v *uint64) bool {
	if f.typ != protowire.VarintType {
		return false
	}
	*v = f.v
	return true
}

// mapEntry adds the map<string, string> entry in f to *m, making the map
// when it is the first: the empty map in *spare when there is one (a pooled
// Request's, kept from an earlier request).
func (d *decoder) mapEntry(f field, m *map[string]string, spare *map[string]string) bool {
	if f.typ != protowire.BytesType {
		return false
	}
	var k, v string
	ok := d.fields(f.lo, f.hi, func(e field) bool {
		switch e.num {
		case 1:
			return d.string(e, &k)
		case 2:
			return d.string(e, &v)
		}
		return false
	})
	if !ok {
		return false
	}
	if *m == nil {
		if spare != nil && *spare != nil {
			*m, *spare = *spare, nil
		} else {
			*m = make(map[string]string, 8)
		}
	}
	(*m)[k] = v
	return true
}

func (d *decoder) attributes(f field, a *authv3.AttributeContext) bool {
	var seen uint32
	return d.fields(f.lo, f.hi, func(f field) bool {
		switch f.num {
		case 1, 2:
			if !d.once(&seen, f) {
				return false
			}
			pm := &d.msgs.peers[f.num-1]
			if f.num == 1 {
				a.Source = &pm.peer
			} else {
				a.Destination = &pm.peer
			}
			return d.peer(f, pm)
		case 4:
			if !d.once(&seen, f) {
				return false
			}
			a.Request = &d.msgs.request
			return d.request(f, a.Request)
		case 10:
			return d.mapEntry(f, &a.ContextExtensions, &d.msgs.spare[1])
		case 11, 13:
			// Envoy always sends both metadata contexts, usually empty.
			// Filled ones go to proto.Unmarshal.
			if !d.once(&seen, f) || f.hi != f.lo {
				return false
			}
			if f.num == 11 {
				a.MetadataContext = &d.msgs.meta[0]
			} else {
				a.RouteMetadataContext = &d.msgs.meta[1]
			}
			return true
		case 12:
			if !d.once(&seen, f) {
				return false
			}
			a.TlsSession = new(authv3.AttributeContext_TLSSession)
			return d.fields(f.lo, f.hi, func(f field) bool {
				return f.num == 1 && d.string(f, &a.TlsSession.Sni)
			})
		}
		return false
	})
}

func (d *decoder) peer(f field, pm *peerMsgs) bool {
	p := &pm.peer
	var seen uint32
	return d.fields(f.lo, f.hi, func(f field) bool {
		switch f.num {
		case 1:
			if !d.once(&seen, f) {
				return false
			}
			p.Address = &pm.addr
			return d.address(f, pm)
		case 2:
			return d.string(f, &p.Service)
		case 3:
			return d.mapEntry(f, &p.Labels, nil)
		case 4:
			return d.string(f, &p.Principal)
		case 5:
			return d.string(f, &p.Certificate)
		}
		return false
	})
}

// address reads an Address that holds a socket address with a port number,
// which is what Envoy sends for TCP peers.
func (d *decoder) address(f field, pm *peerMsgs) bool {
	var seen uint32
	return d.fields(f.lo, f.hi, func(f field) bool {
		if f.num != 1 || !d.once(&seen, f) {
			return false
		}
		s := &pm.sa
		pm.sock.SocketAddress = s
		pm.addr.Address = &pm.sock
		return d.fields(f.lo, f.hi, func(f field) bool {
			var v uint64
			switch f.num {
			case 1:
				if !d.varint(f, &v) {
					return false
				}
				s.Protocol = corev3.SocketAddress_Protocol(int32(v))
				return true
			case 2:
				return d.string(f, &s.Address)
			case 3:
				if !d.varint(f, &v) {
					return false
				}
				pm.port.PortValue = uint32(v)
				s.PortSpecifier = &pm.port
				return true
			case 5:
				return d.string(f, &s.ResolverName)
			case 6:
				if !d.varint(f, &v) {
					return false
				}
				s.Ipv4Compat = protowire.DecodeBool(v)
				return true
			case 7:
				return d.string(f, &s.NetworkNamespaceFilepath)
			}
			return false
		})
	})
}

func (d *decoder) request(f field, r *authv3.AttributeContext_Request) bool {
	var seen uint32
	return d.fields(f.lo, f.hi, func(f field) bool {
		if !d.once(&seen, f) {
			return false
		}
		switch f.num {
		case 1:
			r.Time = &d.msgs.time
			return d.fields(f.lo, f.hi, func(f field) bool {
				var v uint64
				if !d.varint(f, &v) {
					return false
				}
				switch f.num {
				case 1:
					r.Time.Seconds = int64(v)
				case 2:
					r.Time.Nanos = int32(v)
				default:
					return false
				}
				return true
			})
		case 2:
			r.Http = &d.msgs.http
			return d.http(f, r.Http)
		}
		return false
	})
}

func (d *decoder) http(f field, h *authv3.AttributeContext_HttpRequest) bool {
	var seen uint32
	return d.fields(f.lo, f.hi, func(f field) bool {
		switch f.num {
		case 1:
			return d.string(f, &h.Id)
		case 2:
			return d.string(f, &h.Method)
		case 3:
			return d.mapEntry(f, &h.Headers, &d.msgs.spare[0])
		case 4:
			return d.string(f, &h.Path)
		case 5:
			return d.string(f, &h.Host)
		case 6:
			return d.string(f, &h.Scheme)
		case 7:
			return d.string(f, &h.Query)
		case 8:
			return d.string(f, &h.Fragment)
		case 9:
			var v uint64
			if !d.varint(f, &v) {
				return false
			}
			h.Size = int64(v)
			return true
		case 10:
			return d.string(f, &h.Protocol)
		case 11:
			return d.string(f, &h.Body)
		case 12:
			if f.typ != protowire.BytesType {
				return false
			}
			h.RawBody = append(emptyBytes(), d.buf[f.lo:f.hi]...)
			return true
		case 13:
			if !d.once(&seen, f) {
				return false
			}
			h.HeaderMap = new(corev3.HeaderMap)
			return d.headerMap(f, h.HeaderMap)
		}
		return false
	})
}

// emptyBytes is a non-nil empty slice, what protobuf-go decodes an empty
// bytes field to.
func emptyBytes() []byte { return []byte{} }

// headerMap reads the headers Envoy sends as a list (encode_raw_headers).
func (d *decoder) headerMap(f field, m *corev3.HeaderMap) bool {
	return d.fields(f.lo, f.hi, func(f field) bool {
		if f.num != 1 || f.typ != protowire.BytesType {
			return false
		}
		h := new(corev3.HeaderValue)
		m.Headers = append(m.Headers, h)
		return d.fields(f.lo, f.hi, func(f field) bool {
			switch f.num {
			case 1:
				return d.string(f, &h.Key)
			case 2:
				return d.string(f, &h.Value)
			case 3:
				if f.typ != protowire.BytesType {
					return false
				}
				h.RawValue = append(emptyBytes(), d.buf[f.lo:f.hi]...)
				return true
			}
			return false
		})
	})
}
