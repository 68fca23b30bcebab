// Package bpf is the kernel layer (L3): eBPF programs that judge every
// connect() and sendmsg() from an agent's cgroup against its egress
// allowlist and report (and kill, when policy denies) every exec, with the
// loader that detects what the kernel allows, pins the objects under bpffs,
// attaches them to agent cgroups, updates their rules atomically and reads
// their verdicts from a ring buffer.
package bpf
