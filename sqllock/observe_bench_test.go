package sqllock_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// nopAttempts is an AttemptObserver that does nothing: what remains is
// sqllock's own observing work.
type nopAttempts struct{}

func (nopAttempts) Observe(sqllock.Event) {}

func (nopAttempts) ObserveAttempt(context.Context, sqllock.Attempt) sqllock.Observer {
	return nopAttempts{}
}

// BenchmarkObserver measures sqllock's observing work per uncontended
// Lock+Unlock: observer=none (no WithObserver, the default: the lock path
// does no observing work, the same path as LockUnlock's library side)
// against observer=attempt (an AttemptObserver that does nothing), paired
// in one run.
func BenchmarkObserver(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		k := benchKey(b)
		alternate(b, "observer=attempt", lockUnlockLoop(sqllock.New(db, sqllock.WithObserver(nopAttempts{})), k),
			"observer=none", lockUnlockLoop(sqllock.New(db), k))
	})
}
