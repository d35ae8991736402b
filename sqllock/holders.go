package sqllock

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A Holder is one session that holds or waits for an advisory lock, as
// pg_locks and pg_stat_activity show it.
type Holder struct {
	PID             int64     // backend process id; 0 for a prepared transaction
	Shared          bool      // shared mode (ShareLock) rather than exclusive
	Granted         bool      // holds the lock; false while waiting for it
	ApplicationName string    // the session's application_name
	ClientAddr      string    // client address, empty for a Unix socket
	BackendStart    time.Time // when the session began, not when it took the lock
	WaitStart       time.Time // when it began waiting; zero if it holds the lock, and before PostgreSQL 14

	// State is the session's pg_stat_activity.state: "active" (running a
	// statement, as a waiter is), "idle", "idle in transaction", and so on;
	// empty when the server does not show it (another user's session
	// without the pg_read_all_stats role). StateChange is when the session
	// last entered that state: for an idle holder, the end of its last
	// statement (a held lock's keep-alive moves it), not when it took the
	// lock, which PostgreSQL does not record.
	State       string
	StateChange time.Time
}

// Holders lists the sessions that hold or wait for the Mutex's lock, in
// the current database: holders first, then waiters in the order they began
// waiting. Seeing other users' application_name and client address needs
// the pg_read_all_stats role or superuser; without it those fields are
// empty. ctx bounds the query.
func (m *Mutex) Holders(ctx context.Context) ([]Holder, error) {
	if ctx == nil {
		return nil, m.fail("holders", ErrNilContext)
	}
	if m.err != nil {
		return nil, m.fail("holders", m.err)
	}
	hs, err := holders(ctx, m.l.db, m.t.Key)
	if err != nil {
		return nil, m.fail("holders", errs.WithCtxErr(ctx, err))
	}
	return hs, nil
}

func holders(ctx context.Context, db *sql.DB, k keyspace.Key) ([]Holder, error) {
	c, o, s := k.LockTag()
	rows, err := db.QueryContext(ctx, sqltext.Literal(sqltext.HoldersSQL, int64(c), int64(o), int64(s)))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Holder
	for rows.Next() {
		var h Holder
		var start, wait, since sql.NullTime
		if err := rows.Scan(&h.PID, &h.Shared, &h.Granted, &h.ApplicationName, &h.ClientAddr, &start, &wait, &since, &h.State); err != nil {
			return nil, err
		}
		h.BackendStart, h.WaitStart, h.StateChange = start.Time, wait.Time, since.Time
		out = append(out, h)
	}
	return out, rows.Err()
}

// Terminate ends the server sessions that hold the Mutex's lock, in the
// current database, and returns them as they were: for a holder that hangs
// (a stuck process, a frozen VM), not one that died, which the server ends
// by itself. Each holder learns of the loss as usual (Done, Err, WithLock's
// context; withlock exits 74). Waiters are left alone, and so is a holder
// that let go meanwhile, whose session may serve other work by then. With
// no holder it returns no Holder and no error.
//
// Terminating another role's session needs the pg_signal_backend role (or
// superuser); without it the error says so. On PostgreSQL 14 and later
// Terminate returns once the sessions have exited, within ctx.
func (m *Mutex) Terminate(ctx context.Context) ([]Holder, error) {
	if ctx == nil {
		return nil, m.fail("terminate", ErrNilContext)
	}
	if m.err != nil {
		return nil, m.fail("terminate", m.err)
	}
	hs, err := holders(ctx, m.l.db, m.t.Key)
	if err != nil {
		return nil, m.fail("terminate", errs.WithCtxErr(ctx, err))
	}
	var ended []Holder
	for _, h := range hs {
		if !h.Granted || h.PID == 0 {
			continue
		}
		found, err := m.l.sessions.EndHolder(ctx, h.PID, m.t.Key)
		switch {
		case errs.NotPermitted(err):
			return ended, m.fail("terminate", fmt.Errorf("backend %d: the role may not end that session: another role's session needs the pg_signal_backend role, a superuser's needs superuser (%w)", h.PID, err))
		case err != nil:
			return ended, m.fail("terminate", fmt.Errorf("backend %d: %w", h.PID, errs.WithCtxErr(ctx, err)))
		case found:
			ended = append(ended, h)
		}
	}
	return ended, nil
}
