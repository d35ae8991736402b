package sqllock

import (
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/schedule"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A Locker makes mutexes whose locks are PostgreSQL session-level advisory
// locks, taken on connections from a *sql.DB that the caller owns. It opens
// no pool of its own and never closes the caller's.
//
// Each held lock pins one connection of the pool until it is released, so
// the pool's SetMaxOpenConns must leave room for every lock held at once
// plus the application's other queries. A lock that leaves the pool full
// logs a warning, once per Locker (see [WithLogger]).
//
// A Locker is safe for concurrent use by multiple goroutines.
type Locker struct {
	db            *sql.DB
	cfg           config
	placeholders  bool          // keys are parameters of the lock and unlock statements
	prepared      bool          // which sqllock prepares per connection (see drv.StmtCache)
	boundsContext bool          // the driver returns on time when a context ends (pgx)
	stmts         drv.StmtCache // the prepared statements, when prepared
	interrupt     atomic.Int32  // how the driver's statements are interrupted (see interruptHow)
	sched         schedule.Scheduler[*session]
	verify        *sqltext.Verify                    // checks a session before the first lock on it
	sessions      sessionCache                       // the sessions that verify statements verified
	texts         [2]atomic.Pointer[sqltext.Queries] // with placeholders: the statements of int64 keys, of pair keys

	warnedPoolFull atomic.Bool // see warnPoolFull

	pool *sessionPool // shared sessions, with WithSessions; nil otherwise

	settler settle.Settler // ends sessions that may hold a lock
}

// New returns a Locker over db. Options are applied in order.
//
// New does not fail: a nil db or an invalid option is recorded, and every
// operation of the Locker's mutexes returns that error (wrapping [ErrNilDB]
// for a nil db). New does not touch the network.
func New(db *sql.DB, opts ...Option) *Locker {
	l := &Locker{db: db, cfg: defaultConfig()}
	l.sched.Start(time.Now())
	for _, opt := range opts {
		if opt == nil {
			l.cfg.fail(fmt.Errorf("sqllock: nil Option"))
			continue
		}
		opt(&l.cfg)
	}
	if db == nil {
		l.cfg.fail(ErrNilDB)
	}
	if l.cfg.fencing && l.cfg.allowStandby {
		l.cfg.fail(errors.New("sqllock: WithFencing cannot be combined with WithAllowStandby: a standby cannot hand out transaction ids"))
	}
	if db != nil {
		l.boundsContext = drv.IsPgx(db)
		// pgx prepares and caches by itself; other drivers get their
		// lock and unlock statements prepared once per connection (see
		// drv.StmtCache). Both take the key as parameters.
		l.placeholders = true
		l.prepared = !l.boundsContext
	}
	if l.cfg.placeholders != nil {
		l.placeholders = *l.cfg.placeholders
		l.prepared = false
	}
	// The verify statement runs once per session: on a driver that does
	// not cache statements, as a simple query with the token in its text.
	l.verify = sqltext.BuildVerify(l.placeholders && !l.prepared, l.cfg.allowStandby)
	l.settler = settle.Settler{DB: db, Timeout: l.cfg.timeout, Forget: l.forget}
	if l.cfg.sessions > 0 {
		l.pool = &sessionPool{l: l, n: l.cfg.sessions}
	}
	return l
}

// Err returns the Locker's sticky error: nil if New got a usable db and
// valid options.
func (l *Locker) Err() error { return l.cfg.err }

// Mutex returns a mutex for the lock called name, whose key comes from the
// Locker's keyspace strategy (see [WithKeyspace]). Every Mutex for the same
// name and strategy, in this process or any other, contends for the same
// lock. The name itself never reaches SQL text.
//
// If the strategy panics or yields an invalid key, the Mutex records the
// problem and every operation returns it.
func (l *Locker) Mutex(name string) *Mutex {
	m := &Mutex{l: l, name: name}
	if l.cfg.err != nil {
		m.err = l.cfg.err
		return m
	}
	key, err := keyFor(l.cfg.strategy, name)
	if err != nil {
		m.err = err
		return m
	}
	return l.mutex(m, key)
}

// MutexKey returns a mutex for an explicit key, bypassing the keyspace
// strategy. An invalid key (the zero Key) becomes the Mutex's sticky error.
func (l *Locker) MutexKey(k keyspace.Key) *Mutex {
	m := &Mutex{l: l}
	switch {
	case l.cfg.err != nil:
		m.err = l.cfg.err
		return m
	case !k.Valid():
		m.err = fmt.Errorf("invalid keyspace.Key (the zero Key); build keys with keyspace.Int64 or keyspace.Pair")
		return m
	}
	return l.mutex(m, k)
}

func (l *Locker) mutex(m *Mutex, k keyspace.Key) *Mutex {
	m.key = k
	if !l.placeholders {
		m.q = l.build(k, false)
		return m
	}
	// With the key as parameters, the texts are the same for every key of
	// a kind: the Mutex keeps only its arguments.
	kind := 0
	if _, ok := k.Int64(); !ok {
		kind = 1
	}
	if m.q = l.texts[kind].Load(); m.q == nil {
		q := l.build(k, true)
		q.Args, q.Named = nil, nil
		l.texts[kind].CompareAndSwap(nil, q)
		m.q = l.texts[kind].Load()
	}
	m.args = sqltext.KeyArgs(k)
	m.named = drv.Named(m.args)
	return m
}

// build returns the statements for key k, fenced if the Locker fences.
func (l *Locker) build(k keyspace.Key, placeholders bool) *sqltext.Queries {
	q := sqltext.Build(k, placeholders)
	if l.cfg.fencing {
		q.Fence()
	}
	return &q
}

// keyFor runs the strategy, turning a panic or an invalid key into an error.
func keyFor(s keyspace.Strategy, name string) (k keyspace.Key, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("keyspace strategy %T panicked: %v", s, r)
		}
	}()
	k = s.Key(name)
	if !k.Valid() {
		return k, fmt.Errorf("keyspace strategy %T gave no valid key for this name", s)
	}
	return k, nil
}

// forget drops what the Locker remembers of driver connection dc, whose
// session is gone: the session it verified there, and its statements.
func (l *Locker) forget(dc any) {
	l.sessions.drop(dc)
	l.stmts.Drop(dc)
}
