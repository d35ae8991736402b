package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// A scheme is one way to turn a lock name into an advisory-lock key, chosen
// with --keyspace.
type scheme struct {
	name string
	help string
	key  func(lockName string) (keyspace.Key, error)
}

// hashed adapts a keyspace strategy that maps every name to a key.
func hashed(s keyspace.Strategy) func(string) (keyspace.Key, error) {
	return func(name string) (keyspace.Key, error) { return s.Key(name), nil }
}

// literal reads the lock name as a key written in the given space.
func literal(space keyspace.Space, want string) func(string) (keyspace.Key, error) {
	return func(name string) (keyspace.Key, error) {
		k, err := keyspace.Parse(name)
		if err == nil && k.Space() != space {
			err = fmt.Errorf("%w: %s is a %s key", keyspace.ErrSyntax, k, k.Space())
		}
		if err != nil {
			return keyspace.Key{}, fmt.Errorf("lock name %q is not %s: %w", name, want, err)
		}
		return k, nil
	}
}

// schemes is the table of --keyspace names, the default first. Add new
// schemes here; help, validation and docs tests read it.
var schemes = []scheme{
	{"node", "hash of the name, as advisory-lock (Node) v1.1.1+", hashed(keyspace.Node)},
	{"node-legacy", "hash of the name, as advisory-lock up to v1.1.0", hashed(keyspace.NodeLegacy)},
	{"sha256-int64", "hash of the name into the bigint key space", hashed(keyspace.SHA256Int64)},
	{"int64", "lockName is a bigint key, such as 42", literal(keyspace.SpaceInt64, "a bigint key such as 42")},
	{"pair", "lockName is an (int, int) key, such as 1,-2", literal(keyspace.SpacePair, "an int pair such as 1,-2")},
}

// defaultScheme is the --keyspace default.
var defaultScheme = schemes[0].name

// schemeNames lists the valid --keyspace names.
func schemeNames() string {
	names := make([]string, len(schemes))
	for i, s := range schemes {
		names[i] = s.name
	}
	return strings.Join(names, ", ")
}

var errUnknownScheme = errors.New("unknown keyspace")

// lookupScheme returns the scheme called name.
func lookupScheme(name string) (scheme, error) {
	for _, s := range schemes {
		if s.name == name {
			return s, nil
		}
	}
	return scheme{}, fmt.Errorf("%w %q: valid keyspaces are %s", errUnknownScheme, name, schemeNames())
}

// strategy returns the scheme as a keyspace.Strategy, so that sqllock names
// the lock in its errors. Names the scheme rejects yield the zero Key; the
// CLI checks them with key first.
func (s scheme) strategy() keyspace.Strategy {
	return keyspace.Func(func(name string) keyspace.Key {
		k, _ := s.key(name)
		return k
	})
}

// schemeHelp renders the table for --help.
func schemeHelp() string {
	var b strings.Builder
	for _, s := range schemes {
		fmt.Fprintf(&b, "  %-13s %s\n", s.name, s.help)
	}
	return b.String()
}
