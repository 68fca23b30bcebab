package bpf

import (
	"encoding/binary"
	"net/netip"
)

// nativeFromBE returns the native-endian uint32 whose memory holds b, so a
// field the kernel keeps in network byte order gets the right bytes.
func nativeFromBE(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

// addrFromWords turns four network-order words, as kept by the kernel, into
// an address; v4-mapped addresses are unmapped when v4 is set.
func addrFromWords(w [4]uint32, v4 bool) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	a := netip.AddrFrom16(b)
	if v4 {
		return a.Unmap()
	}
	return a
}

// be16 converts a host-order port to the network-order uint16 the kernel
// keeps in memory.
func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}
