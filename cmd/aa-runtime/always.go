package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
)

// resolvConf is where the host's DNS resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// alwaysAllowed lists the destinations every agent governed by aa-runtime
// exec reaches whatever its policy says (the kernel's always-allowed set):
// the gateway (each replica of a comma-separated list: its address or every
// address its host name resolves to, its port), each nameserver of
// dnsConfig(dns, conf) on port 53, and the Envoy egress listener when
// valid. The runtime's own
// socket is a Unix socket, which the cgroup hooks never judge.
func alwaysAllowed(gateway string, dns []string, conf string, envoy netip.AddrPort) ([]bpf.Destination, error) {
	var out []bpf.Destination
	add := func(a netip.Addr, port uint16) {
		a = a.WithZone("")
		out = append(out, bpf.Destination{Prefix: netip.PrefixFrom(a, a.BitLen()), Ports: []uint16{port}, ID: uint32(len(out) + 1)})
	}

	replicas, err := gatewaydial.Split(gateway)
	if err != nil {
		return nil, err
	}
	for _, gateway := range replicas {
		host, portText, err := net.SplitHostPort(gateway)
		if err != nil {
			return nil, fmt.Errorf("gateway address %q: %w", gateway, err)
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("gateway address %q: port %q is not a TCP port", gateway, portText)
		}
		if a, err := netip.ParseAddr(host); err == nil {
			add(a, uint16(port))
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("resolve gateway host %q: %w", host, err)
			}
			for _, a := range addrs {
				add(a.Unmap(), uint16(port))
			}
		}
	}

	cfg, err := dnsConfig(dns, conf)
	if err != nil {
		return nil, err
	}
	for _, ns := range cfg.Servers {
		add(ns.Addr(), ns.Port())
	}

	if envoy.IsValid() {
		add(envoy.Addr(), envoy.Port())
	}
	return out, nil
}
