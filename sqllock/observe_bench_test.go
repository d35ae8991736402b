package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/keyspace"
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

// BenchmarkFakeObserver is BenchmarkObserver over a fake driver that
// answers at once: no round trip, so that sqllock's own observing work
// per Lock+Unlock (the attempt, its clock reads, its registration) is
// not lost in a round trip's noise. Compare ns/op and allocs/op of
// observer=attempt with observer=none.
func BenchmarkFakeObserver(b *testing.B) {
	open := func(opts ...sqllock.Option) *sqllock.Locker {
		db := sql.OpenDB(&fakedriver.Connector{Query: func(_ context.Context, q string) ([]driver.Value, error) {
			return answerAs(q, 7), nil
		}})
		b.Cleanup(func() { db.Close() })
		return sqllock.New(db, append([]sqllock.Option{sqllock.WithPlaceholders(false), sqllock.WithKeepAlive(0, 0)}, opts...)...)
	}
	k := keyspace.Int64(42)
	alternate(b, "observer=attempt", lockUnlockLoop(open(sqllock.WithObserver(nopAttempts{})), k),
		"observer=none", lockUnlockLoop(open(), k))
}
