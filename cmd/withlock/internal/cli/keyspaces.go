package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// A scheme is one way to turn a lock name into an advisory-lock key, chosen
// with --keyspace: a keyspace registry name and its strategy.
type scheme struct {
	name     string
	strategy keyspace.Strategy
}

// defaultScheme is the --keyspace default: the Node package's scheme, so
// that withlock and Node's withlock exclude each other.
const defaultScheme = "node"

// schemeNames lists the valid --keyspace names: keyspace's registry, whose
// names are stable, plus its parameterised forms.
func schemeNames() []string {
	return append(keyspace.Names(), "pals:<app>", "scoped:<n>")
}

var errUnknownScheme = errors.New("unknown keyspace")

// lookupScheme returns the scheme called name. Strategies are looked up
// when used, not at start-up: with-advisory-lock reads its prefix from the
// environment as Ruby does.
func lookupScheme(name string) (scheme, error) {
	s, err := keyspace.Lookup(name)
	if err != nil {
		if n, ok := strings.CutPrefix(name, "scoped:"); ok {
			return scheme{}, fmt.Errorf("keyspace %q: the namespace %q of scoped:<n> must be a decimal int32, as in scoped:42", name, n)
		}
		if errors.Is(err, keyspace.ErrUnknownStrategy) {
			return scheme{}, fmt.Errorf("%w %q: valid keyspaces are %s", errUnknownScheme, name, strings.Join(schemeNames(), ", "))
		}
		return scheme{}, fmt.Errorf("keyspace %q: %w", name, err)
	}
	return scheme{name: name, strategy: s}, nil
}

// key returns the lock's key, or an error saying why the name has none
// (only the int64 and pair schemes reject names).
func (s scheme) key(lockName string) (keyspace.Key, error) {
	k := s.strategy.Key(lockName)
	if k.Valid() {
		return k, nil
	}
	want := map[string]string{"int64": "a bigint key such as 42", "pair": "an int pair such as 1,-2"}[s.name]
	if want == "" {
		want = "a name this keyspace accepts"
	}
	_, err := keyspace.Parse(lockName)
	if err == nil {
		err = fmt.Errorf("%w: wrong key space for keyspace %s", keyspace.ErrSyntax, s.name)
	}
	return keyspace.Key{}, fmt.Errorf("lock name %q is not %s: %w", lockName, want, err)
}

// schemeHelp renders the --keyspace names for --help, a few to a line.
func schemeHelp() string {
	var b strings.Builder
	for i, n := range schemeNames() {
		fmt.Fprintf(&b, "  %-19s", n)
		if i%3 == 2 {
			b.WriteString("\n")
		}
	}
	if len(schemeNames())%3 != 0 {
		b.WriteString("\n")
	}
	b.WriteString("  (node is the default; docs/keyspace.md says which library each matches)\n")
	return b.String()
}
