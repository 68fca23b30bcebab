package sqlite

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// The shared-memory copy of a journal file (DurabilityOS only).
//
// In DurabilityOS a record must be in the operating system, not only in the
// gateway's memory, before its check is answered. Writing each batch to the
// journal file with pwrite did that, but on the build machines a small
// pwrite into a file that the background fdatasync keeps cleaning cost about
// 9 µs of CPU per check, most of the audit log's cost in that mode. So each
// journal file gets a twin of the same size on a tmpfs (DefaultSharedMemoryDir),
// mapped into the process: a batch is copied into the mapping, which the
// kernel owns and keeps when the process dies, and the background flusher
// copies what is new to the journal file and fdatasyncs it within
// FlushInterval, as before. Frames sit at the same offsets in both, so the
// file is always a prefix of its copy.
//
// A process that dies leaves both behind; the next open of the database
// (recover) indexes the copy's frames when the file's frames are a prefix of
// them, and the file's otherwise, then removes both. A reboot empties the
// tmpfs, losing what was not yet flushed: exactly what DurabilityOS promises.
// A copy is named for the journal file and for the journal directory (its
// path, device and inode), so databases on different filesystems that share
// one tmpfs never see each other's copies. Every copy is as long as the
// largest journal file, and a removed file's copy is kept and reused for the
// next file: the first write to a page new to the process costs about 8 µs
// on the build machines, so reused pages make the copy cheap (a 450-byte
// record: 0.9–1.7 µs into fresh pages, 15 ns into reused ones).

// DefaultSharedMemoryDir is where DurabilityOS keeps the journal's
// shared-memory copies, and where recovery looks for them.
const DefaultSharedMemoryDir = "/dev/shm"

// SharedMemoryOff in Options.SharedMemoryDir writes every os-mode batch to
// the journal file instead.
const SharedMemoryOff = "off"

const tmpfsMagic = 0x01021994

// shmCopy is one journal file's copy in shared memory.
type shmCopy struct {
	path string
	f    *os.File
	mem  []byte
	used int64 // bytes that may be non-zero, when kept for reuse
}

// checkTmpfs reports whether dir is a writable directory on a tmpfs.
func checkTmpfs(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return err
	}
	if st.Type != tmpfsMagic {
		return fmt.Errorf("%s is not a tmpfs (filesystem type %#x); the audit journal's shared-memory copy must outlive the process without being written back to a disk", dir, st.Type)
	}
	return syscall.Access(dir, 2 /* W_OK */)
}

// shmPrefix names the copies of the journal directory dir: its absolute
// path, device and inode, hashed.
func shmPrefix(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs + "\x00" + strconv.FormatUint(st.Dev, 10) + "\x00" + strconv.FormatUint(st.Ino, 10)))
	return "aa-audit-" + hex.EncodeToString(sum[:10]) + "-", nil
}

// createShm creates, reserves and maps a zero-filled copy of size bytes.
// The pages are allocated up front (fallocate), so a full tmpfs fails here
// instead of with SIGBUS on a later write.
func createShm(path string, size int64) (*shmCopy, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*shmCopy, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("shared-memory copy %s: %w", path, err)
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return fail(fmt.Errorf("reserve %d bytes: %w", size, err))
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return fail(fmt.Errorf("map: %w", err))
	}
	return &shmCopy{path: path, f: f, mem: mem}, nil
}

// remove unmaps and deletes the copy. Nothing may use mem afterwards.
func (c *shmCopy) remove() error {
	err := syscall.Munmap(c.mem)
	c.mem = nil
	return errors.Join(err, c.f.Close(), os.Remove(c.path))
}

// pickJournal chooses what to recover from a journal file's bytes and its
// shared-memory copy's (nil when there is none): the copy when the file's
// valid frames are a prefix of it, else the file. It says which, and why when
// the copy was passed over. seed is the file's frameSeed (walkFrames).
func pickJournal(file, copy []byte, seed uint32) (data []byte, fromCopy bool, mismatch error) {
	if copy == nil {
		return file, false, nil
	}
	fileEnd, _, _ := walkFrames(file, seed, nil)
	copyEnd, _, _ := walkFrames(copy, seed, nil)
	if copyEnd < fileEnd || !bytes.Equal(file[:fileEnd], copy[:fileEnd]) {
		return file, false, fmt.Errorf("its frames (%d bytes) do not extend the file's (%d bytes)", copyEnd, fileEnd)
	}
	return copy, true, nil
}
