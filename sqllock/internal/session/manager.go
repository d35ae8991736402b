// Package session takes and keeps sqllock's session-level advisory locks:
// the connections and server sessions that carry them, their verification
// and keep-alive, the statements that take and release them, and ending a
// session whose lock state is unknown. sqllock hands a request down (a
// Target: the key and its statements; the mode; wait or try) and gets a
// Grant back; losses come up through the Grant and hooks set once.
package session

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/schedule"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// Config is what a Manager needs from its Locker, set once.
type Config struct {
	DB           *sql.DB
	Interval     time.Duration // keep-alive interval; <= 0: no keep-alive
	Timeout      time.Duration // keep-alive timeout, and the bound of releases and multiplexed statements
	Multiplex    int           // > 0: locks share at most this many sessions (WithSessions)
	Fencing      bool          // exclusive grants carry a fencing token
	Lease        time.Duration // > 0: a holder whose session idles this long loses it (see sqltext.LeaseOn)
	AllowStandby bool
	Placeholders *bool        // nil: keys are parameters, prepared by sqllock unless the driver is pgx
	Logger       *slog.Logger // warnings; nil: slog.Default()

	// Fail makes the error of operation op on t's lock, for errors that
	// outlive a call: a grant's loss, its release.
	Fail func(op string, t *Target, err error) error
	// Ended, when set, is told of each grant's end: released (lost nil),
	// or lost, with the number of grants its session carried (0 when a
	// release found the loss). Grants then record when they were made.
	Ended func(g *Grant, lost error, sessionGrants int)
}

// A Manager takes a Locker's locks on sessions of its *sql.DB.
type Manager struct {
	db            *sql.DB
	cfg           Config
	placeholders  bool          // keys are parameters of the lock and unlock statements
	prepared      bool          // which the Manager prepares per connection (see drv.StmtCache)
	boundsContext bool          // the driver returns on time when a context ends (pgx)
	stmts         drv.StmtCache // the prepared statements, when prepared
	interrupt     atomic.Int32  // how the driver's statements are interrupted (see interruptHow)
	sched         schedule.Scheduler[*session]
	verify        *sqltext.Verify                     // checks a session before the first lock on it
	verified      verifiedCache                       // the sessions that verify statements verified
	texts         [2]atomic.Pointer[sqltext.Queries]  // with placeholders: the statements of int64 keys, of pair keys
	mux           *multiplexed                        // the sessions locks share, with Multiplex; nil otherwise
	settler       settle.Settler                      // ends sessions that may hold a lock
	simple        atomic.Pointer[[]driver.NamedValue] // see simpleArgs
	// The server has an idle_in_transaction_session_timeout of its own,
	// which a lock held in a transaction keeps rather than take a lease
	// (see checkHeld).
	serverIdleInTx atomic.Bool
	heldSplit      atomic.Bool // the driver takes one statement at a time: BEGIN goes alone (see acquireHeld)
	heldBeginFirst atomic.Bool // the sessions' default isolation keeps a snapshot: BEGIN goes first, alone (see checkHeld)
	pooled         atomic.Bool // a connection reached a pooler's sessions: check new ones without cancel requests (see lockStatement)

	warnedPoolFull atomic.Bool // see warnPoolFull
	warnedFewConns atomic.Bool // see warnFewConns
}

// New returns a Manager for cfg.
func New(cfg Config) *Manager {
	m := &Manager{db: cfg.DB, cfg: cfg}
	m.sched.Start(time.Now())
	// pgx prepares and caches by itself; other drivers get their lock and
	// unlock statements prepared once per connection (see drv.StmtCache).
	// Both take the key as parameters.
	m.boundsContext = drv.IsPgx(cfg.DB)
	m.placeholders, m.prepared = true, !m.boundsContext
	if cfg.Placeholders != nil {
		m.placeholders, m.prepared = *cfg.Placeholders, false
	}
	// The verify statement runs once per session: on a driver that does
	// not cache statements, as a simple query with the token in its text.
	m.verify = sqltext.BuildVerify(m.placeholders && !m.prepared, cfg.AllowStandby)
	m.settler = settle.Settler{DB: cfg.DB, Timeout: cfg.Timeout, Forget: m.forget}
	if cfg.Multiplex > 0 {
		m.mux = &multiplexed{m: m, n: cfg.Multiplex}
	}
	return m
}

// A Request is what one lock call asks for.
type Request struct {
	Shared bool
	Try    bool        // take the lock only if it is free: Acquire returns (nil, nil) if not
	OnLost func(error) // called once if the grant is lost, with its loss

	retried bool // held in a transaction: tried again after its server session ended (see errHeldRetry)
}

// Acquire takes t's lock as req asks, on a connection of its own or, with
// Multiplex, on a multiplexed session. Its errors are causes: the caller
// names the operation.
func (m *Manager) Acquire(ctx context.Context, t *Target, req Request) (*Grant, error) {
	if m.mux != nil {
		return m.acquireMultiplexed(ctx, t, req)
	}
	return m.acquireConn(ctx, t, req)
}

// EndHolder ends the session of backend pid if it holds lock k (see
// settle.Settler.EndHolder).
func (m *Manager) EndHolder(ctx context.Context, pid int64, k keyspace.Key) (bool, error) {
	return m.settler.EndHolder(ctx, pid, k)
}

// fencingErr explains err when it says that the server lacks the functions
// of a fenced lock statement.
func (m *Manager) fencingErr(err error) error {
	if m.cfg.Fencing && errs.UndefinedFunction(err) {
		return fmt.Errorf("%w: %w", errs.ErrFencingUnsupported, err)
	}
	return err
}

// forget drops what the Manager remembers of driver connection dc, whose
// session is gone: the session it verified there, and its statements.
func (m *Manager) forget(dc any) {
	m.verified.drop(dc)
	m.stmts.Drop(dc)
}

// grantedNow is when a grant was made, if the Ended hook wants it.
func (m *Manager) grantedNow() time.Time {
	if m.cfg.Ended == nil {
		return time.Time{}
	}
	return time.Now()
}

// StatementRunning reports whether a statement runs, watched, on one of
// the multiplexed sessions (see session.watched); for tests.
func (m *Manager) StatementRunning() bool {
	if m.mux == nil {
		return false
	}
	m.mux.mu.Lock()
	open := append([]*session(nil), m.mux.open...)
	m.mux.mu.Unlock()
	for _, s := range open {
		s.mu.Lock()
		running := s.stmtRunning
		s.mu.Unlock()
		if running {
			return true
		}
	}
	return false
}

// Interrupt returns how the driver's statements are interrupted, once
// known (drv.InterruptUnknown until then); for tests.
func (m *Manager) Interrupt() int { return int(m.interrupt.Load()) }

// SetInterruptForTest makes the Manager interrupt statements how (see
// drv.InterruptWith), as with another driver; for tests.
func (m *Manager) SetInterruptForTest(how int) { m.interrupt.Store(int32(how)) }

// SetHeldSplitForTest makes the Manager send BEGIN apart from a held
// try, as for a driver that takes one statement at a time; for tests.
func (m *Manager) SetHeldSplitForTest() { m.heldSplit.Store(true) }

// SetBoundsContextForTest makes the Manager treat its driver as one that
// bounds its own calls by their context (pgx), or not; for tests.
func (m *Manager) SetBoundsContextForTest(b bool) { m.boundsContext = b }
