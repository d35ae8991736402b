package cli

import (
	"fmt"
	"strings"
)

// Exit statuses of withlock. Apart from these, withlock exits with the
// command's own status when the command ran, or 128+N when it was killed by
// signal N. The sysexits.h names are given where they apply.
const (
	// ExitOK is the status when the command succeeded, or status found the
	// lock free.
	ExitOK = 0

	// ExitHeld is the status when status found the lock held.
	ExitHeld = 1

	// ExitUsage (EX_USAGE) reports bad usage, such as a missing "--", no
	// lock name, an unknown flag or a bad flag value. Nothing ran.
	ExitUsage = 64

	// ExitUnavailable (EX_UNAVAILABLE) reports that the database could not
	// be reached, or refused the lock, before the lock was taken. Nothing
	// ran.
	ExitUnavailable = 69

	// ExitLockLost (EX_IOERR) reports a lock lost while the command ran (its
	// database session ended or stopped answering). The command was sent
	// SIGTERM, then SIGKILL after the grace period; its own status is not
	// passed on.
	ExitLockLost = 74

	// ExitConflict (EX_TEMPFAIL) is the default conflict code: the lock was
	// not acquired, because --try found it taken or --timeout expired.
	// Nothing ran. Change it with -E.
	ExitConflict = 75

	// ExitCannotRun reports a command found but not started (not
	// executable, for example), as in sh(1).
	ExitCannotRun = 126

	// ExitNotFound reports a command not found, as in sh(1). withlock checks
	// this before connecting, so nothing waits for the lock.
	ExitNotFound = 127

	// ExitSignalBase is the base of signal statuses: withlock exits 128+N
	// when the command was killed by signal N, or when signal N stopped
	// withlock while it waited for the lock (then nothing ran).
	ExitSignalBase = 128
)

// exitTable lists every exit status with its meaning, in the words shown by
// --help. docs/withlock.md carries the same table; a test keeps them in step.
var exitTable = []struct {
	code    string
	meaning string
}{
	{"0", "the command succeeded; status: the lock is free"},
	{"1", "status: the lock is held"},
	{fmt.Sprint(ExitUsage), "bad usage: missing --, no lock name, unknown flag or bad value"},
	{fmt.Sprint(ExitUnavailable), "the database could not be reached before the lock was taken"},
	{fmt.Sprint(ExitLockLost), "the lock was lost while the command ran; the command was stopped"},
	{fmt.Sprint(ExitConflict), "the lock was not acquired (--try, --timeout); change with -E"},
	{fmt.Sprint(ExitCannotRun), "the command could not be started"},
	{fmt.Sprint(ExitNotFound), "the command was not found"},
	{"128+N", "the command was killed by signal N, or signal N stopped the wait"},
	{"other", "the command's own exit status"},
}

// exitHelp renders exitTable for --help.
func exitHelp() string {
	var b strings.Builder
	for _, e := range exitTable {
		fmt.Fprintf(&b, "  %-10s %s\n", e.code, e.meaning)
	}
	return b.String()
}
