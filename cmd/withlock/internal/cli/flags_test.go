package cli

import (
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseSeconds(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"5", 5 * time.Second, false},
		{"0.5", 500 * time.Millisecond, false},
		{".5", 500 * time.Millisecond, false},
		{"5.", 5 * time.Second, false},
		{"+2", 2 * time.Second, false},
		{"-1", -time.Second, false},
		{"0", 0, false},
		{"0.000000001", time.Nanosecond, false},
		{"86400", 24 * time.Hour, false},
		{"2s", 2 * time.Second, false},
		{"500ms", 500 * time.Millisecond, false},
		{"1h30m", 90 * time.Minute, false},
		{"-1s", -time.Second, false},
		{"", 0, true},
		{"soon", 0, true},
		{"1e3", 0, true},
		{"inf", 0, true},
		{"NaN", 0, true},
		{"0x10", 0, true},
		{"1_000", 0, true},
		{"1,5", 0, true},
		{"9223372037", 0, true}, // just over math.MaxInt64 nanoseconds
		{"9223372036", 9223372036 * time.Second, false},
	} {
		got, err := parseSeconds(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("parseSeconds(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestNearest(t *testing.T) {
	names := runFlags(&runOptions{}).spellings()
	for _, tc := range []struct{ typed, want string }{
		{"--wiat", "--wait"},
		{"--wait5", "--wait"},
		{"--tiemout", "--timeout"},
		{"--timout", "--timeout"},
		{"-tru", "--try"},
		{"--verb", "--verbose"},
		{"--keep-alive", "--keepalive"},
		{"--conflict", "--conflict-exit-code"},
		{"--shard", "--shared"},
		{"--fence", "--fencing"},
		{"-e", "-E"},
		{"--dv", "--db"},
		{"--json", ""},
		{"--bogus", ""},
		{"-x", ""},
		{"--w", "-w"},
		{"", ""},
	} {
		if got := nearest(tc.typed, names); got != tc.want {
			t.Errorf("nearest(%q) = %q, want %q", tc.typed, got, tc.want)
		}
	}
	for _, tc := range []struct{ typed, want string }{
		{"stat", "status"}, {"stats", "status"}, {"statsu", "status"}, {"Status", "status"},
		{"st", ""}, {"start", ""}, {"deploy", ""}, {"state", ""},
	} {
		if got := nearest(tc.typed, subcommands); got != tc.want {
			t.Errorf("nearest(%q, subcommands) = %q, want %q", tc.typed, got, tc.want)
		}
	}
}

// parsedFlags is what parsing a run-form command line with runFlags gives,
// before parseRun checks it.
type parsedFlags struct {
	opts       runOptions
	positional []string
	err        error
	fs         *flagSet
}

func parseFlags(args []string) parsedFlags {
	var p parsedFlags
	p.fs = runFlags(&p.opts)
	p.positional, p.err = p.fs.parse(args)
	return p
}

// canonical renders a successful parse as --name=value words followed by
// the positional arguments, the form every parse must agree with.
func (p parsedFlags) canonical() []string {
	var out []string
	for _, d := range p.fs.flags {
		if d.set {
			out = append(out, "--"+longName(d)+"="+d.raw)
		}
	}
	return append(out, p.positional...)
}

func longName(d *flagDef) string {
	for _, n := range d.names {
		if len(n) > 1 {
			return n
		}
	}
	return d.names[0]
}

// splitArgs turns one fuzz input into a command line: one argument a line.
func splitArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

var parserSeeds = []string{
	"-nv\njob\n--\ntrue",
	"-vw\n5\njob\n--\nmake",
	"-svw5\njob",
	"-nsvE0\njob",
	"--wait=0.5\n-v=false\njob",
	"-timeout\n3s\n--db\npostgres://u:pw@h/x\njob",
	"--keyspace\nint64\n-42",
	"-\n--try=maybe",
	"--bogus=x\n-x\n-nxv",
	"stat\njob",
	"-w=\n-E\n--grace",
	"-h",
	"-ü\n--ü=1\n-w\xff",
}

// FuzzParseFlags checks the run-form parser on any command line: it never
// panics; a successful parse, rendered in canonical long form, parses to
// the same options and arguments; and no error shows a password given
// with --db, wherever it lands.
func FuzzParseFlags(f *testing.F) {
	for _, s := range parserSeeds {
		f.Add(s, uint8(0), false)
	}
	f.Fuzz(func(t *testing.T, line string, at uint8, kv bool) {
		args := splitArgs(line)
		if i := slices.Index(args, "--"); i >= 0 {
			args = args[:i]
		}
		p := parseFlags(args)
		if p.err == nil {
			again := parseFlags(p.canonical())
			if again.err != nil {
				t.Fatalf("%q parsed; its canonical form %q fails: %v", args, p.canonical(), again.err)
			}
			if !reflect.DeepEqual(again.opts, p.opts) || !slices.Equal(again.positional, p.positional) {
				t.Fatalf("%q: got %+v %q, canonical %q gives %+v %q", args, p.opts, p.positional, p.canonical(), again.opts, again.positional)
			}
		}
		_, _ = parseRun(args) // no panic

		// A password never shows in a usage error.
		if strings.Contains(line, "s3cret") {
			return
		}
		dsn := "postgres://u:s3cretpw@h/x"
		if kv {
			dsn = "host=h password=s3cretpw dbname=x"
		}
		i := int(at) % (len(args) + 1)
		withDB := slices.Concat(args[:i], []string{"--db", dsn}, args[i:], []string{"--", "true"})
		if _, err := parseRun(withDB); err != nil {
			if msg := newRedactor(withDB).redact(err.Error()); strings.Contains(msg, "s3cret") {
				t.Fatalf("%q: the error shows the password: %s", withDB, msg)
			}
		}
		if err := subcommandError(withDB, "stat"); strings.Contains(newRedactor(withDB).redact(err.Error()), "s3cret") {
			t.Fatalf("%q: the subcommand hint shows the password: %v", withDB, err)
		}
	})
}

// FuzzBundle checks that a bundle of short flags means the same as the
// flags given one by one, a value-taking flag last: -nsvw X is
// -n -s -v -w X, and -nsvwX and -nsvw=X are too.
func FuzzBundle(f *testing.F) {
	f.Add(uint8(5), "5", uint8(0))
	f.Add(uint8(7), "0.5", uint8(1))
	f.Add(uint8(2), "soon", uint8(2))
	f.Fuzz(func(t *testing.T, mask uint8, value string, form uint8) {
		var letters string
		var separate []string
		for i, l := range []string{"n", "s", "v"} {
			if mask&(1<<i) != 0 {
				letters += l
				separate = append(separate, "-"+l)
			}
		}
		bundled := []string{"-" + letters}
		if mask&8 != 0 {
			separate = append(separate, "-w", value)
			switch form % 3 {
			case 0:
				bundled = []string{"-" + letters + "w", value}
			case 1:
				if value == "" || strings.HasPrefix(value, "=") {
					return // -w= and -w== say something else
				}
				bundled = []string{"-" + letters + "w" + value}
			case 2:
				bundled = []string{"-" + letters + "w=" + value}
			}
		}
		if letters == "" && mask&8 == 0 {
			return
		}
		a, b := parseFlags(separate), parseFlags(bundled)
		if !reflect.DeepEqual(a.opts, b.opts) || !slices.Equal(a.positional, b.positional) || errText(a.err) != errText(b.err) {
			t.Fatalf("%q gives %+v %q %v; %q gives %+v %q %v", separate, a.opts, a.positional, a.err, bundled, b.opts, b.positional, b.err)
		}
	})
}

// FuzzSeconds checks that a duration given as a Go duration parses to
// itself, and given as a number of seconds parses to itself within
// float64's precision.
func FuzzSeconds(f *testing.F) {
	for _, n := range []int64{0, 1, -1, 5e9, 5e8, 1<<53 + 1, math.MaxInt64, math.MinInt64} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		d := time.Duration(n)
		if got, err := parseSeconds(d.String()); err != nil || got != d {
			t.Fatalf("parseSeconds(%q) = %v, %v; want %v", d.String(), got, err, d)
		}
		s := strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
		got, err := parseSeconds(s)
		if err != nil {
			if math.Abs(float64(n)) < 1<<62 {
				t.Fatalf("parseSeconds(%q): %v", s, err)
			}
			return
		}
		if diff := math.Abs(float64(got) - float64(d)); diff > 1+math.Abs(float64(d))*0x1p-50 {
			t.Fatalf("parseSeconds(%q) = %v, want %v", s, got, d)
		}
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
