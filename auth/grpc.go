package auth

import (
	"context"
	"crypto/x509"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// UnaryInterceptor authorizes unary calls (see Authorize).
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if Passes(info.FullMethod) {
			return h(ctx, req) // as Authorize would, without reading the call's metadata and peer
		}
		ctx, err := a.Authorize(ctx, grpcRequest(ctx, info.FullMethod))
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor authorizes streaming calls (see Authorize).
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if Passes(info.FullMethod) {
			return h(srv, ss)
		}
		ctx, err := a.Authorize(ss.Context(), grpcRequest(ss.Context(), info.FullMethod))
		if err != nil {
			return err
		}
		return h(srv, identityStream{ss, ctx})
	}
}

// identityStream is a ServerStream whose context carries the identity.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identityStream) Context() context.Context { return s.ctx }

// Passes reports whether Authorize lets method (a full gRPC method name)
// through untouched: public and agent methods (the checks Envoy and the
// SDKs make on every action, which authenticate agents themselves). A
// server may skip the interceptors for such a method.
func Passes(method string) bool {
	c := Classify(method)
	return c == ClassPublic || c == ClassAgent
}

func grpcRequest(ctx context.Context, method string) Request {
	r := Request{Method: method, Surface: "grpc"}
	// ValueFromIncomingContext copies only this key's values, where
	// FromIncomingContext copies every header: this runs on every call.
	switch v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) {
	case 0:
	case 1:
		r.Authorization = v[0]
	default:
		r.Authorization = "ambiguous" // several credentials: refused as malformed
	}
	if p, ok := peer.FromContext(ctx); ok {
		if p.Addr != nil {
			r.Source = hostOf(p.Addr.String())
		}
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			r.PeerCert = verifiedLeaf(ti.State.VerifiedChains)
		}
	}
	return r
}

// verifiedLeaf returns the leaf of the first verified chain, or nil.
func verifiedLeaf(chains [][]*x509.Certificate) *x509.Certificate {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil
	}
	return chains[0][0]
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
