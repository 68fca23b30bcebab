package bpf

import "unsafe"

// AssumeMissing makes Open treat the named kernel features as missing
// ("send_signal", "cgroup_sock_addr"), to test degradation on a kernel
// that has them.
func AssumeMissing(o *Options, features ...string) {
	o.assumeMissing = map[string]bool{}
	for _, f := range features {
		o.assumeMissing[f] = true
	}
}

// Layout checks for the hand-written event decoder.
var (
	EventSize     = int(unsafe.Sizeof(governorEvent{}))
	ExecEventSize = int(unsafe.Sizeof(governorExecEvent{}))
	OffComm       = int(unsafe.Offsetof(governorExecEvent{}.Comm))
	OffFilename   = int(unsafe.Offsetof(governorExecEvent{}.Filename))
	OffArgs       = int(unsafe.Offsetof(governorExecEvent{}.Args))
	OffPpid       = int(unsafe.Offsetof(governorEvent{}.Ppid))
	OffAddr       = int(unsafe.Offsetof(governorEvent{}.Addr))

	DecoderEventSize   = evSize
	DecoderExecSize    = execEvSize
	DecoderOffComm     = offComm
	DecoderOffFilename = offFilename
	DecoderOffArgs     = offArgs
)
