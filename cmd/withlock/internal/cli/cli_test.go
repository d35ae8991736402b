package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// runMain runs Main in-process with empty stdin and returns its exit status
// and output.
func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestMainCodes checks the exit status and messages of command lines that
// need no database.
func TestMainCodes(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	for _, tc := range []struct {
		name       string
		args       []string
		want       int
		wantStdout string // substring
		wantStderr string // substring
	}{
		{"no args", nil, ExitUsage, "", "no lock name"},
		{"no separator", []string{"name"}, ExitUsage, "", "missing -- and the command"},
		{"no separator with command", []string{"name", "make", "x"}, ExitUsage, "", "missing -- before the command: withlock [flags] name -- make x"},
		{"no command", []string{"name", "--"}, ExitUsage, "", "no command after --"},
		{"empty command", []string{"name", "--", ""}, ExitUsage, "", "no command after --"},
		{"no lock name", []string{"--", "true"}, ExitUsage, "", "no lock name"},
		{"empty lock name", []string{"", "--", "true"}, ExitUsage, "", "no lock name"},
		{"two lock names", []string{"a", "b", "--", "true"}, ExitUsage, "", `unexpected argument "b" before --`},
		{"unknown flag", []string{"--bogus", "name", "--", "true"}, ExitUsage, "", "unknown flag --bogus\n"},
		{"unknown flag after name", []string{"name", "-v", "--bogus", "--", "true"}, ExitUsage, "", "unknown flag --bogus\n"},
		{"unknown flag, Go style", []string{"-bogus", "name", "--", "true"}, ExitUsage, "", "unknown flag -bogus\n"},
		{"unknown short flag", []string{"-x", "name", "--", "true"}, ExitUsage, "", "unknown flag -x\n"},
		{"unknown short flag in a bundle", []string{"-nxv", "name", "--", "true"}, ExitUsage, "", "unknown flag -x in -nxv\n"},
		{"misspelt flag", []string{"--wiat", "5", "name", "--", "true"}, ExitUsage, "", "unknown flag --wiat; did you mean --wait?"},
		{"misspelt flag with value", []string{"--tiemout=5", "name", "--", "true"}, ExitUsage, "", "unknown flag --tiemout; did you mean --timeout?"},
		{"short flag in the wrong case", []string{"-e", "0", "name", "--", "true"}, ExitUsage, "", "unknown flag -e; did you mean -E?"},
		{"flag abbreviated", []string{"--verb", "name", "--", "true"}, ExitUsage, "", "unknown flag --verb; did you mean --verbose?"},
		{"misspelt --db", []string{"--dv=postgres://u:s3cretpw@h/x", "name", "--", "true"}, ExitUsage, "", "unknown flag --dv; did you mean --db?"},
		{"misspelt status", []string{"stat", "job"}, ExitUsage, "", `unknown command "stat": did you mean withlock status job?`},
		{"misspelt status with flags", []string{"stats", "--json", "job", "--db", "postgres://u:s3cretpw@h/x"}, ExitUsage, "",
			"did you mean withlock status --json job --db postgres://u:xxxxx@h/x?"},
		{"status not first", []string{"-v", "status", "job"}, ExitUsage, "", "status must come first: did you mean withlock status -v job?"},
		{"connection string as a duration", []string{"-w", "postgres://u:s3cretpw@h/x", "name", "--", "true"}, ExitUsage, "", `invalid value "postgres://u:xxxxx@h/x" for -w`},
		{"connection string in a bundle", []string{"-vwpostgres://u:s3cretpw@h/x", "name", "--", "true"}, ExitUsage, "", `for -w: want seconds`},
		{"connection string as a second name", []string{"name", "postgres://u:s3cretpw@h/x", "--", "true"}, ExitUsage, "", `unexpected argument "postgres://u:xxxxx@h/x"`},
		{"connection string after a bad flag", []string{"--db=", "host=h password=s3cretpw", "name", "--", "true"}, ExitUsage, "", `unexpected argument "name"`},
		{"flag without value", []string{"name", "--timeout"}, ExitUsage, "", "flag needs an argument"},
		{"bad duration", []string{"-w", "soon", "name", "--", "true"}, ExitUsage, "", `invalid value "soon" for -w: want seconds (5, 0.5) or a duration (500ms, 2s, 1m30s)`},
		{"bad duration, long", []string{"--wait=5x", "name", "--", "true"}, ExitUsage, "", `invalid value "5x" for --wait: want seconds`},
		{"bad duration in a bundle", []string{"-nvw", "1,5", "name", "--", "true"}, ExitUsage, "", `invalid value "1,5" for -w`},
		{"huge duration", []string{"-w", "1e3", "name", "--", "true"}, ExitUsage, "", `invalid value "1e3" for -w`},
		{"too long", []string{"--grace", "99999999999", "name", "--", "true"}, ExitUsage, "", `invalid value "99999999999" for --grace: too long`},
		{"zero timeout", []string{"-w", "0", "name", "--", "true"}, ExitUsage, "", `invalid value "0" for -w: must be positive`},
		{"zero timeout, Go duration", []string{"-w", "0s", "name", "--", "true"}, ExitUsage, "", `invalid value "0s" for -w: must be positive`},
		{"negative timeout", []string{"--timeout=-1s", "name", "--", "true"}, ExitUsage, "", `invalid value "-1s" for --timeout: must be positive`},
		{"negative timeout in seconds", []string{"-w", "-0.5", "name", "--", "true"}, ExitUsage, "", `invalid value "-0.5" for -w: must be positive`},
		{"try and timeout", []string{"-n", "-w", "1", "name", "--", "true"}, ExitUsage, "", "-n and -w cannot be combined"},
		{"try and timeout, bundled", []string{"--try", "-vw1", "name", "--", "true"}, ExitUsage, "", "--try and -w cannot be combined"},
		{"bad bool", []string{"--try=maybe", "name", "--", "true"}, ExitUsage, "", `invalid value "maybe" for --try: want true or false`},
		{"bad int", []string{"-E", "x", "name", "--", "true"}, ExitUsage, "", `invalid value "x" for -E: not an integer`},
		{"value missing at the end of a bundle", []string{"name", "-vw"}, ExitUsage, "", "flag needs an argument: -w"},
		{"conflict code too big", []string{"-E", "256", "name", "--", "true"}, ExitUsage, "", `invalid value "256" for -E: must be between 0 and 255`},
		{"conflict code negative", []string{"--conflict-exit-code", "-1", "name", "--", "true"}, ExitUsage, "", "between 0 and 255"},
		{"zero keepalive", []string{"--keepalive", "0", "name", "--", "true"}, ExitUsage, "", `invalid value "0" for --keepalive: must be positive`},
		{"negative grace", []string{"--grace", "-1s", "name", "--", "true"}, ExitUsage, "", `invalid value "-1s" for --grace: must not be negative`},
		{"unknown keyspace", []string{"--keyspace", "crc32", "name", "--", "true"}, ExitUsage, "",
			`unknown keyspace "crc32": valid keyspaces are django-pglock, django-pglocks, golang-migrate, golang-migrate-url, goose`},
		{"scoped keyspace, bad namespace", []string{"--keyspace", "scoped:abc", "name", "--", "true"}, ExitUsage, "",
			`keyspace "scoped:abc": the namespace "abc" of scoped:<n> must be a decimal int32`},
		{"int64 keyspace, bad name", []string{"--keyspace", "int64", "nightly", "--", "true"}, ExitUsage, "", `lock name "nightly" is not a bigint key`},
		{"int64 keyspace, pair name", []string{"--keyspace", "int64", "1,2", "--", "true"}, ExitUsage, "", "not a bigint key"},
		{"pair keyspace, int name", []string{"--keyspace", "pair", "42", "--", "true"}, ExitUsage, "", "not an int pair"},
		{"zero slots", []string{"--slots", "0", "name", "--", "true"}, ExitUsage, "", `invalid value "0" for --slots: must be between 1 and 1024`},
		{"negative slots", []string{"--slots=-2", "name", "--", "true"}, ExitUsage, "", `invalid value "-2" for --slots: must be between 1 and 1024`},
		{"too many slots", []string{"-slots", "1025", "name", "--", "true"}, ExitUsage, "", `invalid value "1025" for -slots: must be between 1 and 1024`},
		{"slots not a number", []string{"--slots", "three", "name", "--", "true"}, ExitUsage, "", `invalid value "three" for --slots: not an integer`},
		{"slots without value", []string{"name", "--slots"}, ExitUsage, "", "flag needs an argument: --slots"},
		{"misspelt slots", []string{"--slot", "3", "name", "--", "true"}, ExitUsage, "", "unknown flag --slot; did you mean --slots?"},
		{"slots and shared", []string{"--slots", "3", "-s", "name", "--", "true"}, ExitUsage, "", "--slots and -s cannot be combined: a semaphore's slots are held exclusively"},
		{"slots and shared, long", []string{"--shared", "name", "--slots=2", "--", "true"}, ExitUsage, "", "--slots and --shared cannot be combined"},
		// A keyspace that cannot name the slots is refused before anything
		// connects (the database here is unreachable).
		{"slots, int64 keyspace", []string{"--db", "postgres://postgres:s3cretpw@127.0.0.1:1/x", "--slots", "3", "--keyspace", "int64", "42", "--", "touch", marker}, ExitUsage, "",
			`--slots 3: keyspace int64 cannot name the slots of semaphore "42": lock name "42#0" is not a bigint key`},
		{"slots, pair keyspace", []string{"--slots", "2", "--keyspace", "pair", "1,2", "--", "true"}, ExitUsage, "",
			`keyspace pair cannot name the slots of semaphore "1,2": lock name "1,2#0" is not an int pair`},
		{"slots, goose keyspace", []string{"--db", "postgres://postgres:s3cretpw@127.0.0.1:1/x", "--slots", "2", "--keyspace", "goose", "migrations", "--", "touch", marker}, ExitUsage, "",
			`keyspace goose gives "migrations#0" and "migrations#1" the same key`},
		{"one slot, goose keyspace", []string{"--slots", "1", "--keyspace", "goose-legacy", "x", "--", "true"}, ExitUsage, "",
			`keyspace goose-legacy gives "x#0" and "x#watch" the same key`},
		{"status zero slots", []string{"status", "name", "--slots", "0"}, ExitUsage, "", `status: invalid value "0" for --slots: must be between 1 and 1024`},
		{"status slots, goose keyspace", []string{"status", "--keyspace", "goose", "--slots", "2", "x"}, ExitUsage, "", "the same key"},
		{"status slots, int64 keyspace", []string{"status", "--keyspace", "int64", "--slots", "2", "7"}, ExitUsage, "", `lock name "7#0" is not a bigint key`},
		{"terminate has no slots", []string{"terminate", "name", "--slots", "2"}, ExitUsage, "", "terminate: unknown flag --slots"},
		{"help", []string{"--help"}, ExitOK, "Exit status:", ""},
		{"short help", []string{"-h"}, ExitOK, "Usage:", ""},
		{"help after name", []string{"name", "--help", "--", "true"}, ExitOK, "Usage:", ""},
		{"help in a bundle", []string{"-vh"}, ExitOK, "Usage:", ""},
		{"version", []string{"--version"}, ExitOK, "withlock " + Version + "\n", ""},
		{"status no name", []string{"status"}, ExitUsage, "", "status: no lock name"},
		{"status two names", []string{"status", "a", "b"}, ExitUsage, "", `unexpected argument "b"`},
		{"status bad flag", []string{"status", "a", "--try"}, ExitUsage, "", "status: unknown flag --try\n"},
		{"status misspelt flag", []string{"status", "a", "--jsn"}, ExitUsage, "", "status: unknown flag --jsn; did you mean --json?"},
		{"status help, short", []string{"status", "-h"}, ExitOK, "withlock status <lockName>", ""},
		{"status bad keyspace", []string{"status", "a", "--keyspace", "x"}, ExitUsage, "", "valid keyspaces are"},
		{"status help", []string{"status", "--help"}, ExitOK, "withlock status <lockName>", ""},
		{"command not found", []string{"--db", "postgres://postgres@127.0.0.1:1/x", "name", "--", "withlock-no-such-command"}, ExitNotFound, "", "executable file not found"},
		{"command path not found", []string{"name", "--", "/nonexistent/withlock"}, ExitNotFound, "", "no such file"},
		{"command not executable", []string{"name", "--", "cli_test.go"}, ExitNotFound, "", "not found"},
		{"command path not executable", []string{"name", "--", "./cli_test.go"}, ExitCannotRun, "", "permission denied"},
		{"bad connection string", []string{"--db", "postgres://u:s3cretpw@127.0.0.1:notaport/x", "name", "--", "true"}, ExitUsage, "", "bad connection string from --db"},
		{"misspelt scheme", []string{"--db", "postgress://postgres@127.0.0.1/nu", "name", "--", "true"}, ExitUsage, "",
			`bad connection string from --db: unknown scheme "postgress": a connection URL starts with postgres:// or postgresql:// (did you mean postgres://?)`},
		{"unreachable database", []string{"--db", "postgres://postgres:s3cretpw@127.0.0.1:1/x", "-v", "name", "--", "touch", marker}, ExitUnavailable, "", "cannot reach the database postgres@127.0.0.1:1/x (from --db)"},
		{"unreachable database, status", []string{"status", "--db", "postgres://postgres:s3cretpw@127.0.0.1:1/x", "name"}, ExitUnavailable, "", "cannot reach the database"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runMain(t, tc.args...)
			if code != tc.want {
				t.Errorf("exit status: got %d, want %d\nstderr: %s", code, tc.want, stderr)
			}
			if !strings.Contains(stdout, tc.wantStdout) {
				t.Errorf("stdout: got %q, want it to contain %q", stdout, tc.wantStdout)
			}
			if !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr: got %q, want it to contain %q", stderr, tc.wantStderr)
			}
			if tc.want == ExitUsage && !strings.Contains(stderr, "withlock --help") {
				t.Errorf("stderr: got %q, want a pointer to --help", stderr)
			}
			if strings.Contains(stdout+stderr, "s3cretpw") {
				t.Errorf("the password shows in the output:\nstdout: %s\nstderr: %s", stdout, stderr)
			}
		})
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the command ran although the database was unreachable (stat: %v)", err)
	}
}

// TestParseRun checks that long and short flags set the same option, and
// that flags may come before or after the lock name.
func TestParseRun(t *testing.T) {
	type parsed struct {
		DB           string
		Try, Shared  bool
		Verbose      bool
		Timeout      time.Duration
		ConflictCode int
		Keyspace     string
		KeepAlive    time.Duration
		Grace        time.Duration
		Slots        int
		LockName     string
		Command      []string
	}
	defaults := parsed{ConflictCode: 75, Keyspace: "node", KeepAlive: 2 * time.Second, Grace: 10 * time.Second, LockName: "job", Command: []string{"make", "-j", "--", "x"}}
	with := func(f func(*parsed)) parsed { p := defaults; f(&p); return p }
	for _, tc := range []struct {
		args []string
		want parsed
	}{
		{[]string{"job", "--", "make", "-j", "--", "x"}, defaults},
		{[]string{"-n", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try = true })},
		{[]string{"job", "--try", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try = true })},
		{[]string{"-w", "3s", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 3 * time.Second })},
		{[]string{"job", "--timeout=1m", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = time.Minute })},
		{[]string{"-w", "5", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 5 * time.Second })},
		{[]string{"-w", "0.5", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 500 * time.Millisecond })},
		{[]string{"-w", ".25", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 250 * time.Millisecond })},
		{[]string{"-w5", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 5 * time.Second })},
		{[]string{"-w=500ms", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 500 * time.Millisecond })},
		{[]string{"--wait", "2", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 2 * time.Second })},
		{[]string{"job", "-timeout", "3", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Timeout = 3 * time.Second })},
		{[]string{"-nv", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try, p.Verbose = true, true })},
		{[]string{"-vw", "5", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Verbose, p.Timeout = true, 5*time.Second })},
		{[]string{"-svw5", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Shared, p.Verbose, p.Timeout = true, true, 5*time.Second })},
		{[]string{"-nsvE0", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try, p.Shared, p.Verbose, p.ConflictCode = true, true, true, 0 })},
		{[]string{"-nvE", "3", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try, p.Verbose, p.ConflictCode = true, true, 3 })},
		{[]string{"--try=false", "-v=true", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Verbose = true })},
		{[]string{"--keepalive", "0.5", "--grace", "0", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.KeepAlive, p.Grace = 500*time.Millisecond, 0 })},
		{[]string{"--keyspace", "int64", "-42", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Keyspace, p.LockName = "int64", "-42" })},
		{[]string{"-", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.LockName = "-" })},
		{[]string{"-s", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Shared = true })},
		{[]string{"--shared", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Shared = true })},
		{[]string{"-E", "0", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.ConflictCode = 0 })},
		{[]string{"job", "--conflict-exit-code", "3", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.ConflictCode = 3 })},
		{[]string{"-v", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Verbose = true })},
		{[]string{"job", "--verbose", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Verbose = true })},
		{[]string{"--db", "postgres://h/d", "--keyspace", "sha256-int64", "--keepalive", "500ms", "--grace=0", "job", "--", "make", "-j", "--", "x"},
			with(func(p *parsed) {
				p.DB, p.Keyspace, p.KeepAlive, p.Grace = "postgres://h/d", "sha256-int64", 500*time.Millisecond, 0
			})},
		{[]string{"--slots", "3", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Slots = 3 })},
		{[]string{"job", "-nv", "--slots=1024", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Try, p.Verbose, p.Slots = true, true, 1024 })},
		{[]string{"-slots", "2", "--keyspace", "scoped:7", "job", "--", "make", "-j", "--", "x"}, with(func(p *parsed) { p.Slots, p.Keyspace = 2, "scoped:7" })},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			o, err := parseRun(tc.args)
			if err != nil {
				t.Fatalf("parseRun: %v", err)
			}
			got := parsed{o.db, o.try, o.shared, o.verbose, o.timeout, o.conflictCode, o.keyspace, o.keepAlive, o.grace, o.slots, o.lockName, o.command}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestHelpNamesEveryFlag keeps the hand-written help in step with the flags.
func TestHelpNamesEveryFlag(t *testing.T) {
	h := help()
	for _, sp := range runFlags(&runOptions{}).spellings() {
		if !strings.Contains(h, " "+sp+" ") && !strings.Contains(h, " "+sp+",") {
			t.Errorf("--help does not show %q", sp)
		}
	}
	for _, name := range keyspace.Names() {
		s, err := lookupScheme(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(h, "  "+s.name+" ") && !strings.Contains(h, "  "+s.name+"\n") {
			t.Errorf("--help does not list keyspace %q", s.name)
		}
	}
	for _, line := range strings.Split(h, "\n") {
		if len(line) > 80 {
			t.Errorf("--help line longer than 80 columns: %q", line)
		}
	}
}

// TestDocs keeps docs/withlock.md in step with the exit codes, flags and
// keyspaces.
func TestDocs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "docs", "withlock.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, e := range exitTable {
		if !strings.Contains(doc, "| "+e.code+" ") {
			t.Errorf("docs/withlock.md has no row for exit status %s", e.code)
		}
	}
	for _, name := range keyspace.Names() {
		s, err := lookupScheme(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(doc, "`"+s.name+"`") {
			t.Errorf("docs/withlock.md does not list keyspace %q", s.name)
		}
	}
	for _, sp := range runFlags(&runOptions{}).spellings() {
		if !strings.Contains(doc, "`"+sp) {
			t.Errorf("docs/withlock.md does not document %s", sp)
		}
	}
}

func TestSchemes(t *testing.T) {
	for _, tc := range []struct {
		scheme, name string
		want         keyspace.Key
		wantErr      bool
	}{
		{"node", "dbmigration", keyspace.Pair(-1682085387, -1149921686), false},
		{"node", "x", keyspace.Node.Key("x"), false},
		{"node-legacy", "x", keyspace.NodeLegacy.Key("x"), false},
		{"sha256-int64", "x", keyspace.SHA256Int64.Key("x"), false},
		{"int64", "42", keyspace.Int64(42), false},
		{"int64", "-9223372036854775808", keyspace.Int64(-9223372036854775808), false},
		{"int64", "int64(7)", keyspace.Int64(7), false},
		{"int64", "9223372036854775808", keyspace.Key{}, true},
		{"int64", "1,2", keyspace.Key{}, true},
		{"int64", "x", keyspace.Key{}, true},
		{"pair", "1,-2", keyspace.Pair(1, -2), false},
		{"pair", "pair(3,4)", keyspace.Pair(3, 4), false},
		{"pair", "42", keyspace.Key{}, true},
		{"pair", "1,2147483648", keyspace.Key{}, true},
	} {
		s, err := lookupScheme(tc.scheme)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.key(tc.name)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%s.key(%q) = %v, %v; want %v (error: %v)", tc.scheme, tc.name, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, keyspace.ErrSyntax) {
			t.Errorf("%s.key(%q) error %v does not wrap keyspace.ErrSyntax", tc.scheme, tc.name, err)
		}
		if k := s.strategy.Key(tc.name); k != tc.want {
			t.Errorf("%s.strategy.Key(%q) = %v, want %v", tc.scheme, tc.name, k, tc.want)
		}
	}
	if _, err := lookupScheme("nope"); !errors.Is(err, errUnknownScheme) {
		t.Errorf("lookupScheme(nope): got %v, want errUnknownScheme", err)
	}
	if defaultScheme != "node" {
		t.Errorf("default keyspace: got %q, want node", defaultScheme)
	}
}

func TestResolveDB(t *testing.T) {
	env := func(vars ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for i := 0; i < len(vars); i += 2 {
				if vars[i] == k {
					return vars[i+1], true
				}
			}
			return "", false
		}
	}
	for _, tc := range []struct {
		flag     string
		env      func(string) (string, bool)
		wantDSN  string
		wantFrom string
	}{
		{"f", env("PG_CONNECTION_STRING", "p", "DATABASE_URL", "d"), "f", "--db"},
		{"", env("PG_CONNECTION_STRING", "p", "DATABASE_URL", "d"), "p", "PG_CONNECTION_STRING"},
		{"", env("PG_CONNECTION_STRING", "", "DATABASE_URL", "d"), "d", "DATABASE_URL"},
		{"", env("DATABASE_URL", "d"), "d", "DATABASE_URL"},
		{"", env("PGHOST", "/run/postgresql"), "", "the libpq environment (PGHOST, PGUSER, ...)"},
		{"", env(), "", "the libpq defaults (no --db, PG_CONNECTION_STRING, DATABASE_URL or PG* variable is set)"},
	} {
		got := resolveDB(tc.flag, tc.env)
		if got.dsn != tc.wantDSN || got.from != tc.wantFrom {
			t.Errorf("resolveDB(%q): got %+v, want {%s %s}", tc.flag, got, tc.wantDSN, tc.wantFrom)
		}
	}
}

func TestMaskDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn, want   string
		wantSecrets []string
	}{
		{"postgres://u:s3cret@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable", []string{"s3cret"}},
		{"postgresql://u:p%40ss@h/db", "postgresql://u:xxxxx@h/db", []string{"p%40ss", "p@ss"}},
		{"postgres://u:pw1@h1:5432,h2:5433/db", "postgres://u:xxxxx@h1:5432,h2:5433/db", []string{"pw1"}},
		{"postgres://u@h/db?sslmode=disable&password=s3cret", "postgres://u@h/db?sslmode=disable&password=xxxxx", []string{"s3cret"}},
		{"postgres://h/db?sslpassword=k3y&x=1", "postgres://h/db?sslpassword=xxxxx&x=1", []string{"k3y"}},
		{"postgres://u@h/db", "postgres://u@h/db", nil},
		{"host=h user=u password=s3cret dbname=d", "host=h user=u password=xxxxx dbname=d", []string{"s3cret"}},
		{"host=h password = 's3 c\\'ret' dbname=d", "host=h password = xxxxx dbname=d", []string{"'s3 c\\'ret'", "s3 c'ret"}},
		{"host=h sslpassword=k3y", "host=h sslpassword=xxxxx", []string{"k3y"}},
		{"host=h user=u", "host=h user=u", nil},
	} {
		got, secrets := maskDSN(tc.dsn)
		if got != tc.want || !reflect.DeepEqual(secrets, tc.wantSecrets) {
			t.Errorf("maskDSN(%q) = %q, %q; want %q, %q", tc.dsn, got, secrets, tc.want, tc.wantSecrets)
		}
	}
}

func TestRedactor(t *testing.T) {
	t.Setenv("PG_CONNECTION_STRING", "")
	t.Setenv("DATABASE_URL", "host=h password=envpw")
	t.Setenv("PGPASSWORD", "pgpw")
	r := newRedactor([]string{"-v", "--db", "postgres://u:p%2Fw@h/d", "name", "--", "--db", "postgres://u:after@h/d"})
	r.addSecret("fromconfig")
	for in, want := range map[string]string{
		"connecting to postgres://u:p%2Fw@h/d failed":    "connecting to postgres://u:xxxxx@h/d failed",
		"password p/w and p%2Fw and p%2fw":               "password xxxxx and xxxxx and p%2fw",
		"dsn host=h password=envpw, pgpw, fromconfig":    "dsn host=h password=xxxxx, xxxxx, xxxxx",
		"the command's own postgres://u:after@h/d stays": "the command's own postgres://u:after@h/d stays",
	} {
		if got := r.redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
	r = newRedactor([]string{"--db=host=h password=eqpw"})
	if got := r.redact("eqpw"); got != mask {
		t.Errorf("--db=value: redact = %q, want it masked", got)
	}
}

// A connect error that pgx lists twice (sslmode=prefer tries each address
// with TLS and without) is printed once.
func TestConnectErrorSaysEachAttemptOnce(t *testing.T) {
	err := errors.New("failed to connect to `user=postgres database=postgres`:\n\t127.0.0.1:1 (127.0.0.1): dial error: refused\n\t127.0.0.1:1 (127.0.0.1): dial error: refused\n\t[::1]:1 (::1): dial error: refused")
	want := "failed to connect to `user=postgres database=postgres`:\n\t127.0.0.1:1 (127.0.0.1): dial error: refused\n\t[::1]:1 (::1): dial error: refused"
	if got := connectError(err); got != want {
		t.Errorf("connectError:\ngot  %q\nwant %q", got, want)
	}
}

// TestSemaphoreKeys checks the keys --slots takes, as sqllock names them,
// and that withlock's bound on --slots is sqllock's.
func TestSemaphoreKeys(t *testing.T) {
	for _, name := range []string{"node", "sha256-int64", "scoped:7", "pals:app"} {
		s, err := lookupScheme(name)
		if err != nil {
			t.Fatal(err)
		}
		ks, err := s.semaphoreKeys("report", 3)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, k := range ks.slots {
			if want := s.strategy.Key("report#" + strconv.Itoa(i)); k != want {
				t.Errorf("%s: slot %d has key %v, want %v", name, i, k, want)
			}
		}
		if want := s.strategy.Key("report#watch"); ks.watch != want || len(ks.slots) != 3 {
			t.Errorf("%s: %d slots, watch key %v; want 3 and %v", name, len(ks.slots), ks.watch, want)
		}
	}

	db := stdlib.OpenDB(pgx.ConnConfig{}) // never connects: Semaphore checks its arguments only
	defer db.Close()
	l := sqllock.New(db)
	if err := l.Semaphore("x", maxSlots).Err(); !errors.Is(err, sqllock.ErrNotHeld) {
		t.Errorf("Semaphore(x, %d): %v, want it accepted (Err: ErrNotHeld)", maxSlots, err)
	}
	if err := l.Semaphore("x", maxSlots+1).Err(); errors.Is(err, sqllock.ErrNotHeld) {
		t.Errorf("Semaphore(x, %d) accepted, want sqllock's bound to be maxSlots", maxSlots+1)
	}
}
