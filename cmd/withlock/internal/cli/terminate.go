package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// terminateHelp is the text of withlock terminate --help.
const terminateHelp = `Usage:
  withlock terminate <lockName> [--db <conn>] [--keyspace <name>] [--json]

Ends the server sessions that hold the lock, for a holder that hangs (a
stuck process, a frozen VM), and prints who they were: pid, mode,
application_name, client address, and when the session began. Waiters are
left alone. The holder learns of the loss as usual: withlock exits 74, a
library holder's Done closes and WithLock's context is cancelled. Ending
another role's session needs the pg_signal_backend role (a superuser's,
superuser).

A semaphore's slot i is the lock "<name>#<i>": status <name> --slots N shows
which slot a stuck holder has, and terminate '<name>#<i>' ends that holder
alone.

Flags:
  --db <connectionString>  the database, as for withlock
  --keyspace <name>        how lockName becomes a key, as for withlock
  --json                   print one JSON object, for scripts

Exit status: 0 when the holders were ended or nobody held the lock, 64 for
bad usage, 69 when the database cannot be reached or a session could not be
ended.
`

// terminated is what withlock terminate --json prints.
type terminated struct {
	Lock     string          `json:"lock"`
	Keyspace string          `json:"keyspace"`
	Key      string          `json:"key"`
	Ended    []sessionStatus `json:"ended"` // the sessions ended, as they were
}

// runTerminate carries out withlock terminate and returns the exit status.
func runTerminate(ctx context.Context, args []string, stdout io.Writer, log *logger) int {
	o, err := parseLockCommand("terminate", args)
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, terminateHelp)
		return ExitOK
	case err != nil:
		return usageError(log, err)
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	mu, cfg, closeDB, code := o.open(ctx, "withlock-terminate", log)
	if mu == nil {
		return code
	}
	defer closeDB()
	ended, err := mu.Terminate(ctx)
	st := newLockStatus(o.lockName, o.scheme.name, mu.Key(), ended)
	out := terminated{Lock: st.Lock, Keyspace: st.Keyspace, Key: st.Key, Ended: st.Holders}
	if o.json {
		b, _ := json.MarshalIndent(out, "", "  ") // plain strings, numbers and times
		fmt.Fprint(stdout, log.r.redact(string(b)+"\n"))
	} else {
		fmt.Fprint(stdout, log.r.redact(out.text()))
	}
	if err != nil {
		log.printf("cannot end the holders of lock %q in %s: %v", o.lockName, describeDB(cfg), err)
		return ExitUnavailable
	}
	return ExitOK
}

// text renders what was ended for people.
func (t terminated) text() string {
	var b strings.Builder
	if len(t.Ended) == 0 {
		fmt.Fprintf(&b, "lock %q (keyspace %s, key %s) is not held: nothing ended\n", t.Lock, t.Keyspace, t.Key)
		return b.String()
	}
	for _, s := range t.Ended {
		client := s.ClientAddr
		if client == "" {
			client = "local socket or not visible"
		}
		since := "unknown"
		if s.BackendStart != nil {
			since = s.BackendStart.Format("2006-01-02 15:04:05 MST")
		}
		fmt.Fprintf(&b, "ended backend %d, which held lock %q %s (application %q, client %s, session since %s)\n",
			s.PID, t.Lock, s.Mode, s.ApplicationName, client, since)
	}
	return b.String()
}
