package bpf

// The C sources under c/ are compiled by bpf2go (pinned in go.mod as a tool)
// into governor_bpfel.o and the Go bindings in governor_bpfel.go. Both are
// committed, so building needs no clang; `make generate` (bpf/generate.sh)
// rebuilds them byte for byte and CI checks that they match.
//
//go:generate go tool bpf2go -target bpfel -go-package bpf -type event -type exec_event -type agent -type rule_key -type rule -type exec_key -type exec_rule governor c/governor.c -- -mcpu=v3 -Wall -Werror -I/usr/include -Ic
