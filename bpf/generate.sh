#!/usr/bin/env bash
# Rebuilds the eBPF object and its Go bindings (bpf2go) under bpf/, byte for
# byte. Tools are pinned: clang-14 and llvm-strip-14 from Debian 12's
# clang-14/llvm-14, the libbpf headers from libbpf-dev (1.1), bpf2go from
# go.mod's tool directive. c/vmlinux.h is committed and only regenerated
# from the running kernel's BTF with VMLINUX=1 (it then depends on the
# kernel, so review the diff). Output is committed; CI checks that running
# this again changes nothing. Building the Go code never needs clang.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v clang-14 >/dev/null || need+=(clang-14)
command -v llvm-strip-14 >/dev/null || need+=(llvm-14)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
if [ "${VMLINUX:-}" = 1 ] && ! command -v bpftool >/dev/null; then need+=(bpftool); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${VMLINUX:-}" = 1 ]; then
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > c/vmlinux.h
  echo "regenerated c/vmlinux.h from $(uname -r)" >&2
fi

BPF2GO_CC=clang-14 BPF2GO_STRIP=llvm-strip-14 go generate ./gen.go
echo "generated: bpf/governor_bpfel.o ($(stat -c %s governor_bpfel.o) bytes), bpf/governor_bpfel.go" >&2
