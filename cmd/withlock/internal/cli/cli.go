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
	"flag"
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
)

// Main runs withlock with args (the command line without the program name),
// the given standard streams and environment of the process, and returns the
// exit status (see the Exit constants). The command, if one runs, gets stdin,
// stdout and stderr as they are. ctx bounds only the wait for the lock:
// when it ends first, Main gives up as on --timeout. Main is meant to be
// called once per process: it handles the process's signals while it runs.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	log := &logger{w: stderr, r: newRedactor(args)}
	if len(args) > 0 && args[0] == "status" && !slices.Contains(args, "--") {
		return runStatus(ctx, args[1:], stdout, log)
	}
	o, err := parseRun(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
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
	version      bool

	scheme   scheme
	lockName string
	command  []string
}

// newFlagSet returns a flag set that reports errors to its caller only.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// runFlags binds the flags of the run form to o. Long and short names share
// one variable. The help text is written by hand in help; a test checks
// that it names every flag.
func runFlags(o *runOptions) *flag.FlagSet {
	fs := newFlagSet("withlock")
	fs.StringVar(&o.db, "db", "", "")
	for _, n := range []string{"n", "try"} {
		fs.BoolVar(&o.try, n, false, "")
	}
	for _, n := range []string{"w", "timeout"} {
		fs.DurationVar(&o.timeout, n, 0, "")
	}
	for _, n := range []string{"s", "shared"} {
		fs.BoolVar(&o.shared, n, false, "")
	}
	for _, n := range []string{"E", "conflict-exit-code"} {
		fs.IntVar(&o.conflictCode, n, ExitConflict, "")
	}
	for _, n := range []string{"v", "verbose"} {
		fs.BoolVar(&o.verbose, n, false, "")
	}
	fs.StringVar(&o.keyspace, "keyspace", defaultScheme, "")
	fs.DurationVar(&o.keepAlive, "keepalive", defaultKeepAlive, "")
	fs.DurationVar(&o.grace, "grace", defaultGrace, "")
	fs.BoolVar(&o.version, "version", false, "")
	return fs
}

// parseArgs parses flags anywhere among args and returns the other
// arguments, in order. args must not contain "--".
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// parseRun parses and checks a command line of the run form:
// [flags] <lockName> [flags] -- <command> [args...]. It returns
// flag.ErrHelp for -h and --help.
func parseRun(args []string) (*runOptions, error) {
	o := &runOptions{}
	fs := runFlags(o)
	before, command, hasSep := cutArgs(args)
	positional, err := parseArgs(fs, before)
	if err != nil {
		return nil, err
	}
	if o.version {
		return o, nil
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	switch {
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
	case o.try && (set["w"] || set["timeout"]):
		return nil, errors.New("--try and --timeout cannot be combined: --try does not wait at all")
	case (set["w"] || set["timeout"]) && o.timeout <= 0:
		return nil, fmt.Errorf("--timeout must be positive, not %v; use --try not to wait", o.timeout)
	case o.conflictCode < 0 || o.conflictCode > 255:
		return nil, fmt.Errorf("--conflict-exit-code must be between 0 and 255, not %d", o.conflictCode)
	case o.keepAlive <= 0:
		return nil, fmt.Errorf("--keepalive must be positive, not %v: without it a lost lock goes unnoticed while the command runs", o.keepAlive)
	case o.grace < 0:
		return nil, fmt.Errorf("--grace must not be negative, not %v", o.grace)
	}
	o.lockName, o.command = positional[0], command
	if o.scheme, err = lookupScheme(o.keyspace); err != nil {
		return nil, err
	}
	if _, err := o.scheme.key(o.lockName); err != nil {
		return nil, fmt.Errorf("--keyspace %s: %w", o.keyspace, err)
	}
	return o, nil
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
  withlock status <lockName> [--db <conn>] [--keyspace <name>] [--json]

withlock runs a command while holding the PostgreSQL advisory lock called
lockName, so that only one such command runs at a time across every host that
shares the database. It waits for the lock (unless --try or --timeout say
otherwise), runs the command directly (no shell) with the same stdin, stdout,
stderr and environment, releases the lock as soon as the command exits, and
exits with the command's status. Flags may come before or after lockName;
everything after -- is the command.

Flags:
      --db <connectionString>   the database (default: $PG_CONNECTION_STRING,
                                then $DATABASE_URL, then the libpq variables
                                PGHOST, PGUSER, PGPASSWORD, PGDATABASE, ...)
  -n, --try                     do not wait: if the lock is taken, exit at
                                once with the conflict code
  -w, --timeout <duration>      wait at most this long (500ms, 30s, 5m), then
                                exit with the conflict code
  -s, --shared                  take the lock in shared mode: shared holders
                                run together, exclusive ones alone
  -E, --conflict-exit-code <n>  exit status when the lock is not acquired
                                (default 75)
  -v, --verbose                 report waiting, acquiring and releasing on
                                stderr
      --keyspace <name>         how lockName becomes a key (default node):
` + indent(schemeHelp(), "      ") + `      --keepalive <duration>    check the lock's session this often while the
                                command runs (default 2s)
      --grace <duration>        after a lost lock, time between SIGTERM and
                                SIGKILL to the command; 0 kills at once
                                (default 10s)
  -h, --help                    show this help
      --version                 print the version

The lock is held by a database session named withlock:<lockName> in
pg_stat_activity. If that session ends while the command runs, the command is
stopped (SIGTERM, then SIGKILL after --grace) and withlock exits 74.
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to the
command; while withlock still waits, they stop the wait and nothing runs.

status prints whether the lock is held, in which mode and by whom, and how
many sessions wait for it; --json prints it for scripts. It exits 0 when the
lock is free and 1 when it is held.

Exit status:
` + exitHelp() + `
Examples:
  withlock dbmigration -- ./migrate up
  withlock -n -E 0 nightly-report -- ./report.sh     # cron on many hosts
  withlock -w 30s -v deploy -- make deploy
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
