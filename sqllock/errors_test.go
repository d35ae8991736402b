package sqllock_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// An error's message says the package name once, however deep its causes
// of this package nest; errors.Is still finds each of them.
func TestErrorSaysThePackageOnce(t *testing.T) {
	cause := fmt.Errorf("%w: keep-alive: %w (%w: backend 7)", sqllock.ErrLockLost,
		fmt.Errorf("%w (500ms, the keep-alive timeout)", sqllock.ErrNoAnswer), sqllock.ErrNotReleased)
	err := &sqllock.Error{Op: "hold", Name: "nightly", Key: keyspace.Int64(42), Err: cause}
	want := `sqllock: hold "nightly" int64(42): lock lost: keep-alive: no answer from the server within sqllock's bound (500ms, the keep-alive timeout) (release not confirmed: the abandoned session may hold the lock until the server ends it: backend 7)`
	if got := err.Error(); got != want {
		t.Errorf("message:\ngot  %s\nwant %s", got, want)
	}
	for _, target := range []error{sqllock.ErrLockLost, sqllock.ErrNoAnswer, sqllock.ErrNotReleased} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(err, %v) = false", target)
		}
	}
}
