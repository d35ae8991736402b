package sqllock

import (
	"context"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
)

// WithFencing gives every exclusive lock a fencing token: a number that is
// larger than every token handed out before it, for any key, by the same
// PostgreSQL cluster. Pass it along with every write the lock protects, and
// let the resource refuse a write whose token is smaller than one it has
// already seen: a holder that stalled (a long GC pause, a stopped VM, a
// silent network) and lost its lock meanwhile then cannot overwrite the
// work of the holder that came after it, which no lock alone can prevent.
// docs/recipes.md shows the guard, in PostgreSQL and elsewhere.
//
// Read the token with [Mutex.Token] after Lock or TryLock, or with [Token]
// inside the function given to [Mutex.WithLock], [Mutex.TryWithLock] or
// [Election.Run]. Shared locks get none.
//
// The token is the server's timeline above the transaction id of the lock
// statement itself (pg_current_xact_id), both read after the grant in the
// same round trip, so tokens of one key grow in the order the server
// grants it. The statement also writes a small WAL record
// (pg_logical_emit_message), so that its commit is flushed before the
// token is returned, even where synchronous_commit is off for the session:
// a server that crashes and restarts never hands out a token it handed out
// before. The timeline grows with every promotion of a standby and every
// restore to a point in time, so the server that takes over hands out
// larger tokens even when it lost commits of the old primary and hands
// their transaction ids out again, as with asynchronous replication. An
// old primary that goes on granting after the promotion hands out smaller
// tokens than the new one, which a resource that saw the new ones refuses;
// docs/design.md says what else is not covered. A token fits a bigint;
// tokens of versions without the timeline were bare transaction ids, and
// are smaller than every token now.
//
// The cost is a transaction id and a WAL flush per exclusive grant (see
// docs/benchmarks.md); unlocks cost nothing more. It needs PostgreSQL 13
// or later: on older servers every exclusive lock fails with an error
// that says so. A standby cannot hand out transaction ids, so WithFencing
// cannot be combined with [WithAllowStandby].
func WithFencing() Option {
	return func(c *config) { c.fencing = true }
}

// Token returns the fencing token of the exclusive lock this Mutex holds
// (see [WithFencing]): the lock described by [Mutex.Done] when it is
// exclusive, or the oldest exclusive lock still held. It reports false
// when the Mutex holds no exclusive lock, when that lock was lost, or when
// the Locker was made without WithFencing.
func (m *Mutex) Token() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, list := range [][]*session.Grant{m.excl, m.scoped} {
		for _, h := range list {
			if !h.Shared() && h.Token() != 0 && h.Err() == nil {
				return h.Token(), true
			}
		}
	}
	return 0, false
}

// tokenKey is the context key under which WithLock's fn finds its token.
type tokenKey struct{}

// Token returns the fencing token of the lock that the function given to
// [Mutex.WithLock], [Mutex.TryWithLock] or [Election.Run] runs under,
// from the context that function got (see [WithFencing]). It reports false
// for any other context, for a shared lock, and for a Locker made without
// WithFencing. The token stays in the context after the lock is lost: the
// resource it fences is what refuses it then.
func Token(ctx context.Context) (uint64, bool) {
	if ctx == nil {
		return 0, false
	}
	t, ok := ctx.Value(tokenKey{}).(uint64)
	return t, ok
}

// ErrFencingUnsupported reports an exclusive lock of a Locker made with
// [WithFencing] that the server refused for lack of the functions fencing
// tokens need (SQLSTATE 42883): a server older than PostgreSQL 13. The
// attempt took nothing.
var ErrFencingUnsupported = errs.ErrFencingUnsupported
