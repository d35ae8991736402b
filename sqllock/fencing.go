package sqllock

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
// The token is the transaction id of the lock statement itself
// (pg_current_xact_id), assigned after the grant in the same round trip,
// so tokens of one key grow in the order the server grants it. The
// statement also writes a small WAL record (pg_logical_emit_message), so
// that its commit is flushed before the token is returned, even where
// synchronous_commit is off for the session: a server that crashes and
// restarts never hands out a token it handed out before. Across a failover
// this holds when the standby had the commit before it was promoted:
// with synchronous replication (synchronous_commit on or remote_write and
// the standby in synchronous_standby_names), not with asynchronous
// replication, where a promoted standby may hand out again ids the old
// primary gave but never shipped. docs/design.md has the details.
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
	for _, list := range [][]*hold{m.excl, m.scoped} {
		for _, h := range list {
			if !h.shared && h.token != 0 && h.err() == nil {
				return h.token, true
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

// fencedToken is the SQL of a fencing token, evaluated only after the
// lock statement's grant: a CASE evaluates a branch only when it is taken.
// pg_logical_emit_message with transactional true assigns the statement
// a transaction id and writes WAL, which makes its commit a flushed one
// (a transaction that writes no WAL commits without a flush, and after a
// crash its id is handed out again); set_config with is_local true makes
// that flush synchronous for this transaction alone where the session
// turned synchronous_commit off.
const fencedToken = "CASE WHEN pg_logical_emit_message(true, 'sqllock', '') IS NOT NULL" +
	" AND (current_setting('synchronous_commit') <> 'off' OR set_config('synchronous_commit', 'on', true) <> '')" +
	" THEN pg_current_xact_id()::text::int8 END"

// fence turns q's exclusive lock statements into fenced ones, which answer
// the token of a grant (see fencedToken), 0 for a try that found the lock
// taken, or no row for another session (see buildQueries).
func (q *queries) fence() {
	q.lock = &lockStmt{kind: kindLock, fenced: true, guarded: strings.Split(
		"SELECT CASE WHEN pg_advisory_lock("+q.keyList+") IS NOT NULL THEN "+fencedToken+" END"+sessionGuard, tokenMark)}
	q.try = &lockStmt{kind: kindTry, fenced: true, guarded: strings.Split(
		"SELECT CASE WHEN pg_try_advisory_lock("+q.keyList+") THEN "+fencedToken+" ELSE 0 END"+sessionGuard, tokenMark)}
}

// fencedAnswer reads a fenced lock statement's answer: the token of a
// grant, or 0 when a try found the lock taken.
func fencedAnswer(v any) (uint64, error) {
	n, ok := intAnswer(v)
	if !ok || n < 0 {
		return 0, fmt.Errorf("the fenced lock statement answered %T %v, not a token: whether the session holds the lock is unknown, so it is discarded", v, v)
	}
	return uint64(n), nil
}

// ErrFencingUnsupported reports an exclusive lock of a Locker made with
// [WithFencing] that the server refused for lack of the functions fencing
// tokens need (SQLSTATE 42883): a server older than PostgreSQL 13. The
// attempt took nothing.
var ErrFencingUnsupported = errors.New("sqllock: WithFencing needs PostgreSQL 13 or later (pg_current_xact_id, pg_logical_emit_message)")

// fencingErr explains err when it says that the server lacks the functions
// of a fenced lock statement.
func (l *Locker) fencingErr(err error) error {
	if l.cfg.fencing && undefinedFunction(err) {
		return fmt.Errorf("%w: %w", ErrFencingUnsupported, err)
	}
	return err
}
