package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/jackc/pgx/v5"
)

// statusTimeout bounds the whole of withlock status.
const statusTimeout = 30 * time.Second

// statusOptions is a parsed command line of withlock status.
type statusOptions struct {
	db       string
	keyspace string
	json     bool
	slots    int // status --slots: the semaphore's number of slots; 0 for the lock

	scheme   scheme
	lockName string // the lock's name, or the semaphore's with --slots
	semKeys  semKeys
	locker   *sqllock.Locker // set by open
}

// parseStatus parses the arguments after "status": <lockName> and flags, in
// any order. It returns errHelp for -h and --help.
func parseStatus(args []string) (*statusOptions, error) {
	return parseLockCommand("status", args)
}

// parseLockCommand parses the arguments of a subcommand about one lock
// (status, terminate): <lockName> and flags, in any order.
func parseLockCommand(sub string, args []string) (*statusOptions, error) {
	o := &statusOptions{keyspace: defaultScheme}
	fs := newFlags("withlock " + sub)
	fs.stringVar(&o.db, "db")
	fs.stringVar(&o.keyspace, "keyspace")
	fs.boolVar(&o.json, "json")
	if sub == "status" {
		fs.intVar(&o.slots, "slots")
	}
	fs.helpFlag()
	positional, err := fs.parse(args)
	slots, _, semaphore := fs.given("slots")
	switch {
	case err != nil:
		return nil, err
	case len(positional) == 0 || positional[0] == "":
		return nil, fmt.Errorf("%s: no lock name: withlock %s <lockName> [--db <conn>] [--keyspace <name>] [--json]", sub, sub)
	case len(positional) > 1:
		return nil, fmt.Errorf("%s: unexpected argument %q: give one lock name", sub, positional[1])
	case semaphore && (o.slots < 1 || o.slots > maxSlots):
		return nil, fmt.Errorf("%s: %w", sub, fs.invalid("slots", fmt.Sprintf("must be between 1 and %d", maxSlots)))
	}
	o.lockName = positional[0]
	if o.scheme, err = lookupScheme(o.keyspace); err != nil {
		return nil, err
	}
	if semaphore {
		if o.semKeys, err = o.scheme.semaphoreKeys(o.lockName, o.slots); err != nil {
			return nil, fmt.Errorf("%s %d: %w", slots, o.slots, err)
		}
		return o, nil
	}
	if _, err := o.scheme.key(o.lockName); err != nil {
		return nil, fmt.Errorf("--keyspace %s: %w", o.keyspace, err)
	}
	return o, nil
}

// open connects to the database of o, as application appName, and returns
// the Mutex of o's lock, with a function that closes the connection; or a
// nil Mutex and the exit status, having said why.
func (o *statusOptions) open(ctx context.Context, appName string, log *logger) (*sqllock.Mutex, *pgx.ConnConfig, func(), int) {
	src := resolveDB(o.db, os.LookupEnv)
	log.r.addDSN(src.dsn)
	cfg, err := parseDB(src, appName)
	if err != nil {
		return nil, nil, nil, usageError(log, fmt.Errorf("bad connection string from %s: %w", src.from, err))
	}
	log.r.addSecret(cfg.Password)
	db, err := connect(ctx, cfg)
	if err != nil {
		log.printf("cannot reach the database %s (from %s): %s", describeDB(cfg), src.from, connectError(err))
		return nil, nil, nil, ExitUnavailable
	}
	o.locker = sqllock.New(db, sqllock.WithKeyspace(o.scheme.strategy))
	return o.locker.Mutex(o.lockName), cfg, func() { _ = db.Close() }, ExitOK
}

// statusHelp is the text of withlock status --help.
const statusHelp = `Usage:
  withlock status <lockName> [--db <conn>] [--keyspace <name>] [--json]
  withlock status <semaphoreName> --slots <n> [--db <conn>] [--keyspace <name>]
                  [--json]

Prints whether the lock is held, in which mode (exclusive or shared) and by
which sessions (pid, application_name, client address), and which sessions
wait for it. Only sessions of the same database count. Each session shows
the times the server knows: "session since" (when it connected), "idle
since" or "active since" (its last change of state) and, for waiters on
PostgreSQL 14 and later, "waiting since". The server does not record when a
lock was taken. When the lock is a leader election's (sqllock's Election)
and its holder has won but still waits out its takeover delay, status says
so: that holder does not lead yet.

With --slots, it reports on the semaphore of that many slots (withlock
--slots): which slots are held and by whom, which sessions wait for which
slot, and which session holds its watch lock (a waiter that tries the
slots no one waits for).

Flags:
  --db <connectionString>  the database, as for withlock
  --keyspace <name>        how lockName becomes a key, as for withlock
  --slots <n>              report on the semaphore with n slots
  --json                   print one JSON object, for scripts

Exit status: 0 when the lock is free (every slot, with --slots), 1 when it
is held (any slot), 64 for bad usage, 69 when the database cannot be
reached.
`

// runStatus carries out withlock status and returns the exit status.
func runStatus(ctx context.Context, args []string, stdout io.Writer, log *logger) int {
	o, err := parseStatus(args)
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, statusHelp)
		return ExitOK
	case err != nil:
		return usageError(log, err)
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	mu, cfg, closeDB, code := o.open(ctx, "withlock-status", log)
	if mu == nil {
		return code
	}
	defer closeDB()
	if o.slots > 0 {
		return semaphoreStatus(ctx, o, cfg, stdout, log)
	}
	hs, err := mu.Holders(ctx)
	if err != nil {
		log.printf("cannot read the lock's holders from %s: %v", describeDB(cfg), err)
		return ExitUnavailable
	}

	ld, err := o.locker.Election(o.lockName).Leadership(ctx)
	if err != nil {
		log.printf("cannot read the lock's election state from %s: %v", describeDB(cfg), err)
		return ExitUnavailable
	}
	st := newLockStatus(o.lockName, o.scheme.name, mu.Key(), hs)
	st.setElection(ld.State)
	return printStatus(st, st.Held, o.json, stdout, log)
}

// statusReport is a status that prints itself for people.
type statusReport interface{ text(now time.Time) string }

// printStatus prints st, as JSON with --json, and returns the exit status
// of withlock status: whether it is held.
func printStatus(st statusReport, held, asJSON bool, stdout io.Writer, log *logger) int {
	var out string
	if asJSON {
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil { // cannot happen: plain strings, numbers and times
			log.printf("%v", err)
			return ExitUnavailable
		}
		out = string(b) + "\n"
	} else {
		out = st.text(time.Now())
	}
	fmt.Fprint(stdout, log.r.redact(out))
	if held {
		return ExitHeld
	}
	return ExitOK
}

// lockStatus is what withlock status reports, and its --json form.
type lockStatus struct {
	Lock     string          `json:"lock"`           // the lock name
	Keyspace string          `json:"keyspace"`       // the --keyspace scheme
	Key      string          `json:"key"`            // the key, as "pair(1,-2)" or "int64(42)"
	Held     bool            `json:"held"`           // whether any session holds the lock
	Mode     string          `json:"mode,omitempty"` // "exclusive" or "shared" when held
	Holders  []sessionStatus `json:"holders"`        // sessions holding the lock
	Waiting  int             `json:"waiting"`        // number of sessions waiting for it
	Waiters  []sessionStatus `json:"waiters"`        // those sessions, longest waiting first

	// ElectionState is the lock as a leader election's: "none" (no
	// exclusive holder), "waiting" (the holder has won and waits out its
	// takeover delay: it does not lead yet) or "leading" (held
	// exclusively otherwise, whether by an election's leader or not).
	ElectionState string `json:"election_state"`
}

// setElection records the election state s (see sqllock.Leadership).
func (st *lockStatus) setElection(s sqllock.ElectionState) {
	switch s {
	case sqllock.ElectionWaiting:
		st.ElectionState = "waiting"
	case sqllock.ElectionLeading:
		st.ElectionState = "leading"
	default:
		st.ElectionState = "none"
	}
}

// sessionStatus is one session that holds or waits for the lock. The
// server records when a session began, when it last changed state and,
// from PostgreSQL 14 on, when a waiter began waiting, but not when a lock
// was granted: the text form labels each time for what it is.
type sessionStatus struct {
	PID             int64      `json:"pid"`                     // backend process id
	Mode            string     `json:"mode"`                    // "exclusive" or "shared"
	ApplicationName string     `json:"application_name"`        // withlock:<lockName> for withlock
	ClientAddr      string     `json:"client_addr"`             // empty for a Unix socket, or when not visible
	BackendStart    *time.Time `json:"backend_start,omitempty"` // when the session began
	WaitStart       *time.Time `json:"wait_start,omitempty"`    // when a waiter began waiting (PostgreSQL 14+)
	State           string     `json:"state,omitempty"`         // pg_stat_activity.state: "idle", "active", ...
	StateChange     *time.Time `json:"state_change,omitempty"`  // when the session entered State
}

// newLockStatus builds the status of the lock called name, in keyspace
// scheme, from its holders and waiters.
func newLockStatus(name, scheme string, key keyspace.Key, hs []sqllock.Holder) *lockStatus {
	st := &lockStatus{
		Lock: name, Keyspace: scheme, Key: key.String(),
		Holders: []sessionStatus{}, Waiters: []sessionStatus{},
	}
	for _, h := range hs {
		s := newSessionStatus(h)
		if h.Granted {
			st.Holders = append(st.Holders, s)
		} else {
			st.Waiters = append(st.Waiters, s)
		}
	}
	st.Held, st.Waiting = len(st.Holders) > 0, len(st.Waiters)
	if st.Held {
		st.Mode = st.Holders[0].Mode
	}
	return st
}

// newSessionStatus describes the session of h.
func newSessionStatus(h sqllock.Holder) sessionStatus {
	return sessionStatus{
		PID: h.PID, Mode: modeName(h.Shared), ApplicationName: h.ApplicationName, ClientAddr: h.ClientAddr,
		BackendStart: timePtr(h.BackendStart), WaitStart: timePtr(h.WaitStart),
		State: h.State, StateChange: timePtr(h.StateChange),
	}
}

func modeName(shared bool) string {
	if shared {
		return "shared"
	}
	return "exclusive"
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// text renders the status for people.
func (st *lockStatus) text(now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "lock %q (keyspace %s, key %s): ", st.Lock, st.Keyspace, st.Key)
	switch n := len(st.Holders); {
	case n == 0:
		b.WriteString("free\n")
	case st.Mode == "shared":
		fmt.Fprintf(&b, "held shared by %s\n", plural(n, "session"))
	default:
		b.WriteString("held exclusively\n")
	}
	if st.ElectionState == "waiting" {
		b.WriteString("  an election's winner, waiting out its takeover delay: it does not lead yet\n")
	}
	for _, line := range st.sessionLines(now) {
		b.WriteString(line + "\n")
	}
	if st.Waiting == 0 {
		b.WriteString("no session waiting\n")
	}
	return b.String()
}

// sessionLines describes the holders, one line each, then the number of
// waiters and each waiter, longest waiting first.
func (st *lockStatus) sessionLines(now time.Time) []string {
	var lines []string
	for _, s := range st.Holders {
		lines = append(lines, s.text("held by", now))
	}
	if st.Waiting > 0 {
		lines = append(lines, plural(st.Waiting, "session")+" waiting")
		for _, s := range st.Waiters {
			lines = append(lines, s.text("waiting", now))
		}
	}
	return lines
}

// text describes one session: who it is, then each time the server knows,
// labelled for what it is. A holder's times are never when it took the
// lock: PostgreSQL does not record that.
func (s sessionStatus) text(what string, now time.Time) string {
	app := s.ApplicationName
	if app == "" {
		app = "(no application_name)"
	}
	client := s.ClientAddr
	if client == "" {
		client = "local socket"
	}
	line := fmt.Sprintf("  %s pid %d (%s, %s) from %s", what, s.PID, s.Mode, app, client)
	at := func(label string, t *time.Time) {
		if t != nil {
			line += fmt.Sprintf(", %s since %s (%v ago)", label, t.Local().Format(time.RFC3339), now.Sub(*t).Round(time.Second))
		}
	}
	at("waiting", s.WaitStart)
	at("session", s.BackendStart)
	if s.State != "" {
		at(s.State, s.StateChange)
	}
	return line
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
