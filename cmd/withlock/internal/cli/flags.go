package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// errHelp is returned by the parsers for -h and --help.
var errHelp = errors.New("help requested")

// A flagSet parses withlock's flags the way flock(1) users expect, as
// getopt_long does, and as Go's flag package did before it:
//
//   - --name, --name=value and --name value for long names;
//   - -x, -xvalue, -x=value and -x value for one-letter names, and bundles
//     of them: -nv is -n -v, and a flag that takes a value may end a
//     bundle, its value following (-vw5, -vw 5);
//   - -name as --name, when name is a long name (Go's flag syntax);
//   - a boolean flag takes a value only after "=" (--try=false);
//   - "-", and "-" followed by a digit (a negative key such as -42), are
//     arguments, not flags.
//
// Errors name the flag as it was typed. An unknown flag's value (after
// "=") is never echoed, since it could be a connection string.
type flagSet struct {
	cmd   string // "withlock" or "withlock status", for messages
	flags []*flagDef
	names map[string]*flagDef
}

// A flagDef is one flag with all its names.
type flagDef struct {
	names []string // without dashes; one letter is a short name
	value flagValue
	help  bool // -h, --help: parsing stops with errHelp

	typed string // how it was last given: "-w", "--timeout"
	raw   string // the text of its last value
	set   bool
}

// A flagValue is the variable a flag sets.
type flagValue interface {
	set(s string) error
	isBool() bool
}

func newFlags(cmd string) *flagSet {
	return &flagSet{cmd: cmd, names: map[string]*flagDef{}}
}

// add defines a flag with the given names; the first long name is the one
// messages and the help use.
func (fs *flagSet) add(v flagValue, names ...string) *flagDef {
	d := &flagDef{names: names, value: v}
	for _, n := range names {
		if fs.names[n] != nil {
			panic("flag redefined: " + n)
		}
		fs.names[n] = d
	}
	fs.flags = append(fs.flags, d)
	return d
}

func (fs *flagSet) boolVar(p *bool, names ...string) { fs.add((*boolValue)(p), names...) }
func (fs *flagSet) stringVar(p *string, names ...string) {
	fs.add((*stringValue)(p), names...)
}
func (fs *flagSet) intVar(p *int, names ...string) { fs.add((*intValue)(p), names...) }
func (fs *flagSet) durationVar(p *time.Duration, names ...string) {
	fs.add((*secondsValue)(p), names...)
}

// helpFlag defines -h and --help.
func (fs *flagSet) helpFlag() {
	var b bool
	fs.add((*boolValue)(&b), "h", "help").help = true
}

// invalid returns the error for a value that parsed but is out of range:
// the flag called name, as typed, with its value, and why.
func (fs *flagSet) invalid(name, why string) error {
	typed, raw, _ := fs.given(name)
	return &valueError{flag: typed, value: raw, err: errors.New(why)}
}

// given reports whether the flag called name was given, and how it was
// typed ("-w") and with which value ("5").
func (fs *flagSet) given(name string) (typed, raw string, ok bool) {
	d := fs.names[name]
	if d == nil || !d.set {
		return "", "", false
	}
	return d.typed, d.raw, true
}

// spellings returns every name with its dashes: "-w", "--timeout", ...
func (fs *flagSet) spellings() []string {
	var out []string
	for _, d := range fs.flags {
		for _, n := range d.names {
			out = append(out, dashed(n))
		}
	}
	return out
}

// dashed returns a flag name with the dashes it is documented with.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// parse parses args, which must not contain "--", and returns the
// arguments that are not flags, in order. It returns errHelp as soon as it
// meets -h or --help.
func (fs *flagSet) parse(args []string) (positional []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		// next returns the following argument as a value, if there is one.
		next := func() (string, bool) {
			if i+1 >= len(args) {
				return "", false
			}
			i++
			return args[i], true
		}
		switch {
		case !strings.HasPrefix(a, "-") || a == "-" || (a[1] >= '0' && a[1] <= '9'):
			positional = append(positional, a)
		case strings.HasPrefix(a, "--"):
			name, value, hasValue := strings.Cut(a[2:], "=")
			if err := fs.long("--"+name, name, value, hasValue, next); err != nil {
				return nil, err
			}
		default:
			name, value, hasValue := strings.Cut(a[1:], "=")
			if len(name) > 1 && fs.names[name] != nil {
				if err := fs.long("-"+name, name, value, hasValue, next); err != nil {
					return nil, err
				}
				continue
			}
			if err := fs.bundle(a, next); err != nil {
				return nil, err
			}
		}
	}
	return positional, nil
}

// long handles one flag given by its long name, typed as typed.
func (fs *flagSet) long(typed, name, value string, hasValue bool, next func() (string, bool)) error {
	d := fs.names[name]
	if d == nil {
		return fs.unknown(typed)
	}
	if d.value.isBool() && !hasValue {
		value, hasValue = "true", true
	}
	if !hasValue {
		if value, hasValue = next(); !hasValue {
			return fmt.Errorf("flag needs an argument: %s", typed)
		}
	}
	return fs.setFlag(d, typed, value)
}

// bundle handles a word of one-letter flags: -n, -nv, -w5, -vw5, -vw 5,
// -w=5.
func (fs *flagSet) bundle(word string, next func() (string, bool)) error {
	letters, _, _ := strings.Cut(word[1:], "=")
	for j := 0; j < len(word)-1; j++ {
		d := fs.names[word[1+j:2+j]]
		if d == nil {
			r, _ := utf8.DecodeRuneInString(word[1+j:])
			switch {
			case j == 0 && len(letters) > 1: // not a bundle at all: -bogus
				return fs.unknown("-" + letters)
			case j > 0: // -nx
				return fs.unknownIn("-"+string(r), "-"+letters)
			}
			return fs.unknown("-" + string(r))
		}
		typed, rest := "-"+word[1+j:2+j], word[2+j:]
		switch {
		case strings.HasPrefix(rest, "="):
			return fs.setFlag(d, typed, rest[1:])
		case d.value.isBool():
			if err := fs.setFlag(d, typed, "true"); err != nil {
				return err
			}
		case rest != "":
			return fs.setFlag(d, typed, rest)
		default:
			value, ok := next()
			if !ok {
				return fmt.Errorf("flag needs an argument: %s", typed)
			}
			return fs.setFlag(d, typed, value)
		}
	}
	return nil
}

// setFlag sets d from value, given as typed.
func (fs *flagSet) setFlag(d *flagDef, typed, value string) error {
	if d.help {
		if b, err := strconv.ParseBool(value); err != nil || b {
			return errHelp
		}
		return nil
	}
	if err := d.value.set(value); err != nil {
		return &valueError{flag: typed, value: value, err: err}
	}
	d.typed, d.raw, d.set = typed, value, true
	return nil
}

// A valueError is a bad flag value. Its message names the flag as typed and
// the value.
type valueError struct {
	flag, value string
	err         error
}

func (e *valueError) Error() string {
	return fmt.Sprintf("invalid value %q for %s: %v", e.value, e.flag, e.err)
}

func (e *valueError) Unwrap() error { return e.err }

// unknown reports an unknown flag, typed as typed (without any value), and
// suggests the nearest known one.
func (fs *flagSet) unknown(typed string) error {
	msg := fmt.Sprintf("unknown flag %s", typed)
	if fs.cmd != "withlock" {
		msg = fmt.Sprintf("%s: unknown flag %s", strings.TrimPrefix(fs.cmd, "withlock "), typed)
	}
	if s := nearest(typed, fs.spellings()); s != "" {
		msg += fmt.Sprintf("; did you mean %s?", s)
	}
	return errors.New(msg)
}

// unknownIn reports an unknown letter in a bundle of short flags.
func (fs *flagSet) unknownIn(typed, word string) error {
	msg := fmt.Sprintf("unknown flag %s in %s", typed, word)
	if s := nearest(word, fs.spellings()); s != "" && len(s) > 2 {
		msg += fmt.Sprintf("; did you mean %s?", s)
	}
	return errors.New(msg)
}

// The flag values.
type (
	boolValue   bool
	stringValue string
	intValue    int
)

func (b *boolValue) set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	*b = boolValue(v)
	return nil
}

func (*boolValue) isBool() bool { return true }

func (p *stringValue) set(s string) error { *p = stringValue(s); return nil }

func (*stringValue) isBool() bool { return false }

func (p *intValue) set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("not an integer")
	}
	*p = intValue(v)
	return nil
}

func (*intValue) isBool() bool { return false }
