package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
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

// maxSlots is the most slots --slots accepts: sqllock's bound on a
// semaphore's n (every slot is a lock of its own, and a waiter tries them
// all). TestMaxSlots keeps the two in step.
const maxSlots = 1024

// semKeys are the keys of a semaphore's locks, as sqllock names them:
// slot i is the lock "<name>#<i>", and "<name>#watch" is held by the
// waiter that tries the slots.
type semKeys struct {
	slots []keyspace.Key
	watch keyspace.Key
}

// semaphoreKeys returns the keys of the n slots of the semaphore called
// name and of its watch lock, or an error saying why the scheme cannot
// name them: a scheme that parses names as numbers gives a slot name no
// key, and one that ignores names gives them all one key. sqllock would
// refuse such a semaphore on first use; withlock refuses it before it
// connects.
func (s scheme) semaphoreKeys(name string, n int) (semKeys, error) {
	names := make([]string, 0, n+1)
	for i := range n {
		names = append(names, sqllock.SlotName(name, i))
	}
	names = append(names, name+"#watch")
	seen := make(map[keyspace.Key]string, n+1)
	var ks semKeys
	for _, lock := range names {
		k, err := s.key(lock)
		if err != nil {
			return semKeys{}, fmt.Errorf("keyspace %s cannot name the slots of semaphore %q: %w; --slots needs a keyspace that hashes names, such as %s (the default)", s.name, name, err, defaultScheme)
		}
		if other, dup := seen[k]; dup {
			return semKeys{}, fmt.Errorf("keyspace %s gives %q and %q the same key %v, so it cannot name the slots of semaphore %q; --slots needs a keyspace that hashes names, such as %s (the default)", s.name, other, lock, k, name, defaultScheme)
		}
		seen[k] = lock
		ks.slots = append(ks.slots, k)
	}
	ks.slots, ks.watch = ks.slots[:n], ks.slots[n]
	return ks, nil
}
