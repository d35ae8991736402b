// Package cli implements the withlock command: it runs a command while
// holding a PostgreSQL advisory lock, so that only one such command runs at a
// time across every host that shares the database.
//
// Everything lives here, behind [Main], so that it can be tested; package
// main only calls Main. The manual is docs/withlock.md, and withlock --help.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Version is the version of withlock, printed by --version.
const Version = "0.1.0"

// Defaults of the loss-detection flags.
const (
	defaultKeepAlive = 2 * time.Second  // --keepalive
	defaultGrace     = 10 * time.Second // --grace

	// tokenEnv names the variable in which --fencing gives the command
	// the lock's fencing token.
	tokenEnv = "WITHLOCK_TOKEN"
)

// Main runs withlock with args (the command line without the program name),
// the given standard streams and environment of the process, and returns the
// exit status (see the Exit constants). The command, if one runs, gets stdin,
// stdout and stderr as they are. ctx bounds only the wait for the lock:
// when it ends first, Main gives up as on --timeout. Main is meant to be
// called once per process: it handles the process's signals while it runs.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	log := &logger{w: stderr, r: newRedactor(args)}
	if len(args) > 0 && !slices.Contains(args, "--") {
		switch sub := nearest(args[0], subcommands); {
		case args[0] == "status":
			return runStatus(ctx, args[1:], stdout, log)
		case args[0] == "terminate":
			return runTerminate(ctx, args[1:], stdout, log)
		case sub != "" && !strings.HasPrefix(args[0], "-"):
			return usageError(log, subcommandError(args, args[0]))
		}
	}
	o, err := parseRun(args)
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, help())
		return ExitOK
	case err != nil:
		return usageError(log, err)
	case o.version:
		fmt.Fprintf(stdout, "withlock %s\n", Version)
		return ExitOK
	}
	log.verbose = o.verbose
	return run(ctx, o, stdin, stdout, stderr, log)
}

// subcommands are the words that, first on the command line, select
// another form than the run form.
var subcommands = []string{"status", "terminate"}

// subcommandError is the error for a run-form command line without "--"
// whose first argument, word, is or nearly is a subcommand: a misspelt or
// misplaced "status". It suggests the command line meant, the subcommand
// first.
func subcommandError(args []string, word string) error {
	sub := nearest(word, subcommands)
	meant := []string{"withlock", sub}
	skipped := false
	for _, a := range args {
		if a == word && !skipped {
			skipped = true
			continue
		}
		meant = append(meant, shellQuote(a))
	}
	if word == sub {
		return fmt.Errorf("%s must come first: did you mean %s?", sub, strings.Join(meant, " "))
	}
	return fmt.Errorf("unknown command %q: did you mean %s? (to run a command under lock %q, put -- before the command)", word, strings.Join(meant, " "), word)
}

// shellQuote quotes s for sh(1) if it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,:/@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// usageError reports bad usage and returns ExitUsage.
func usageError(log *logger, err error) int {
	log.printf("%v", err)
	log.printf("run 'withlock --help' for usage")
	return ExitUsage
}

// runOptions is a parsed command line of the run form.
type runOptions struct {
	db           string
	try          bool
	timeout      time.Duration
	shared       bool
	conflictCode int
	verbose      bool
	keyspace     string
	keepAlive    time.Duration
	grace        time.Duration
	fencing      bool
	slots        int // --slots: hold one of this many slots of a semaphore; 0 for the lock
	version      bool

	scheme   scheme
	lockName string // the lock's name, or the semaphore's with --slots
	semKeys  semKeys
	command  []string
}

// runFlags binds the flags of the run form to o. Long and short names share
// one variable. The help text is written by hand in help; a test checks
// that it names every flag.
func runFlags(o *runOptions) *flagSet {
	fs := newFlags("withlock")
	fs.stringVar(&o.db, "db")
	fs.boolVar(&o.try, "n", "try")
	fs.durationVar(&o.timeout, "w", "wait", "timeout")
	fs.boolVar(&o.shared, "s", "shared")
	fs.intVar(&o.conflictCode, "E", "conflict-exit-code")
	fs.boolVar(&o.verbose, "v", "verbose")
	fs.stringVar(&o.keyspace, "keyspace")
	fs.durationVar(&o.keepAlive, "keepalive")
	fs.durationVar(&o.grace, "grace")
	fs.boolVar(&o.fencing, "fencing")
	fs.intVar(&o.slots, "slots")
	fs.boolVar(&o.version, "version")
	fs.helpFlag()
	return fs
}

// parseRun parses and checks a command line of the run form:
// [flags] <lockName> [flags] -- <command> [args...]. It returns errHelp
// for -h and --help.
func parseRun(args []string) (*runOptions, error) {
	o := &runOptions{conflictCode: ExitConflict, keyspace: defaultScheme, keepAlive: defaultKeepAlive, grace: defaultGrace}
	fs := runFlags(o)
	before, command, hasSep := cutArgs(args)
	positional, err := fs.parse(before)
	if err != nil {
		return nil, err
	}
	if o.version {
		return o, nil
	}
	try, _, _ := fs.given("try")
	wait, _, waits := fs.given("timeout")

	switch {
	case len(positional) > 0 && !hasSep && nearest(positional[0], subcommands) != "":
		return nil, subcommandError(args, positional[0])
	case len(positional) > 1 && !hasSep:
		return nil, fmt.Errorf("missing -- before the command: withlock [flags] %s -- %s", positional[0], strings.Join(positional[1:], " "))
	case len(positional) > 1:
		return nil, fmt.Errorf("unexpected argument %q before --: give one lock name, and the command after --", positional[1])
	case len(positional) == 0 || positional[0] == "":
		return nil, errors.New("no lock name: withlock [flags] <lockName> -- <command> [args...]")
	case !hasSep:
		return nil, fmt.Errorf("missing -- and the command to run: withlock [flags] %s -- <command> [args...]", positional[0])
	case len(command) == 0 || command[0] == "":
		return nil, errors.New("no command after --")
	case o.try && waits:
		return nil, fmt.Errorf("%s and %s cannot be combined: %s does not wait at all", try, wait, try)
	}
	switch {
	case waits && o.timeout <= 0:
		return nil, fs.invalid("timeout", "must be positive; use -n not to wait")
	case o.conflictCode < 0 || o.conflictCode > 255:
		return nil, fs.invalid("conflict-exit-code", "must be between 0 and 255")
	case o.keepAlive <= 0:
		return nil, fs.invalid("keepalive", "must be positive: without it a lost lock goes unnoticed while the command runs")
	case o.grace < 0:
		return nil, fs.invalid("grace", "must not be negative")
	case o.fencing && o.shared:
		return nil, errors.New("--fencing and --shared cannot be combined: shared locks get no fencing token")
	}
	slots, _, semaphore := fs.given("slots")
	switch {
	case semaphore && (o.slots < 1 || o.slots > maxSlots):
		return nil, fs.invalid("slots", fmt.Sprintf("must be between 1 and %d", maxSlots))
	case semaphore && o.shared:
		shared, _, _ := fs.given("shared")
		return nil, fmt.Errorf("%s and %s cannot be combined: a semaphore's slots are held exclusively", slots, shared)
	}
	o.lockName, o.command = positional[0], command
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

// wanted names what withlock waits for, in messages: lock "x", or a slot
// of semaphore "x".
func (o *runOptions) wanted() string {
	if o.slots > 0 {
		return fmt.Sprintf("a slot of semaphore %q", o.lockName)
	}
	return fmt.Sprintf("lock %q", o.lockName)
}

// cutArgs splits args at the first "--": withlock's own arguments before it,
// the command after it.
func cutArgs(args []string) (before, command []string, found bool) {
	i := slices.Index(args, "--")
	if i < 0 {
		return args, nil, false
	}
	return args[:i], args[i+1:], true
}

// help is the text of --help.
func help() string {
	return `Usage:
  withlock [flags] <lockName> -- <command> [args...]
  withlock --slots <n> [flags] <semaphoreName> -- <command> [args...]
  withlock status <lockName> [--slots <n>] [--db <conn>] [--keyspace <name>]
                  [--json]
  withlock terminate <lockName> [--db <conn>] [--keyspace <name>] [--json]

withlock runs a command while holding the PostgreSQL advisory lock called
lockName, so that only one such command runs at a time across every host that
shares the database; with --slots n, while holding one of the n slots of a
semaphore, so that at most n run at a time. It waits for the lock or a slot
(unless --try or --timeout say otherwise), runs the command directly (no
shell) with the same stdin, stdout, stderr and environment, releases the lock
as soon as the command exits, and exits with the command's status. Flags may
come before or after lockName; everything after -- is the command. Short
flags combine as in flock(1): -nv is -n -v, and -vw 5 is -v -w 5. Durations
are seconds (5, 0.5) or Go durations (500ms, 2m, 1h30m).

Flags:
      --db <connectionString>   the database (default: $PG_CONNECTION_STRING,
                                then $DATABASE_URL, then the libpq variables
                                PGHOST, PGUSER, PGPASSWORD, PGDATABASE, ...)
  -n, --try                     do not wait: if the lock is taken, exit at
                                once with the conflict code
  -w, --wait, --timeout <time>  wait at most this long (5, 0.5, 500ms, 2m),
                                then exit with the conflict code
  -s, --shared                  take the lock in shared mode: shared holders
                                run together, exclusive ones alone
  -E, --conflict-exit-code <n>  exit status when the lock is not acquired
                                (default 75)
  -v, --verbose                 report waiting, acquiring (which slot, with
                                --slots) and releasing on stderr, and who
                                holds the lock (each slot) when it is not
                                acquired
      --keyspace <name>         how lockName becomes a key (default node):
` + indent(schemeHelp(), "      ") + `      --keepalive <time>        check the lock's session this often while the
                                command runs (default 2s)
      --grace <time>            after a lost lock, time between SIGTERM and
                                SIGKILL to the command; 0 kills at once
                                (default 10s)
      --fencing                 give the command the lock's fencing token in
                                $WITHLOCK_TOKEN: larger than every token
                                before it; pass it with each write the lock
                                protects (PostgreSQL 13+)
      --slots <n>               hold one of n slots of the semaphore called
                                lockName instead of the lock, so that at
                                most n such commands run at once; slot i is
                                the lock "<lockName>#<i>". Not with --shared,
                                nor with a keyspace that does not hash names
  -h, --help                    show this help
      --version                 print the version

The lock is held by a database session named withlock:<lockName> in
pg_stat_activity; so is a slot, and what follows holds for it too. If that
session ends while the command runs, the command is stopped (SIGTERM, then
SIGKILL after --grace) and withlock exits 74. The command inherits the
session's socket: if withlock is killed, the lock is held until the command,
and anything it started that kept the socket, has exited (on Linux the
command and everything it started are killed with withlock; on FreeBSD the
command is). A withlock stopped with its command (SIGSTOP, a paused
container) loses the lock after its lease, 10s.
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to the
command; while withlock still waits, they stop the wait and nothing runs.

status prints whether the lock is held, in which mode and by whom, and how
many sessions wait for it; --json prints it for scripts. It exits 0 when the
lock is free and 1 when it is held. With --slots n it reports on the
semaphore: each slot's holder, who waits for which slot, and the watcher; it
exits 1 when any slot is held.

Exit status:
` + exitHelp() + `
Examples:
  withlock dbmigration -- ./migrate up
  withlock -n -E 0 nightly-report -- ./report.sh     # cron on many hosts
  withlock -vw 30 deploy -- make deploy
  withlock --slots 3 report -- ./report.sh           # at most 3 at once
  withlock status dbmigration --json
`
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}
