package sqllock

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
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
	db       *sql.DB
	cfg      config
	sessions *session.Manager // takes the locks; nil with a sticky error
	obs      *observing       // nil without observers
}

// New returns a Locker over db. Options are applied in order.
//
// New does not fail: a nil db or an invalid option is recorded, and every
// operation of the Locker's mutexes returns that error (wrapping [ErrNilDB]
// for a nil db). New does not touch the network.
func New(db *sql.DB, opts ...Option) *Locker {
	l := &Locker{db: db, cfg: defaultConfig()}
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
	lease, err := l.cfg.leaseFor()
	if err != nil {
		l.cfg.fail(err)
	}
	if l.cfg.err != nil {
		return l
	}
	sc := session.Config{
		DB:           db,
		Interval:     l.cfg.interval,
		Timeout:      l.cfg.timeout,
		Multiplex:    l.cfg.sessions,
		Fencing:      l.cfg.fencing,
		Lease:        lease,
		AllowStandby: l.cfg.allowStandby,
		Placeholders: l.cfg.placeholders,
		Logger:       l.cfg.logger,
		Fail:         fail,
	}
	if len(l.cfg.observers) != 0 {
		l.obs = newObserving(l.cfg.observers)
		sc.Ended = l.observeEnd
	}
	l.sessions = session.New(sc)
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
	m := &Mutex{l: l}
	m.t.Name = name
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

// Keyspace returns a Locker that names its locks with strategy s and
// shares everything else with l: the pool, the options and, with
// [WithSessions], the sessions its locks share. Per-tenant locks with
// [keyspace.Scoped] are one Locker and a Keyspace per tenant: with
// WithSessions(n), every tenant's locks together hold at most n sessions,
// where a Locker per tenant would hold n each. A nil s becomes the
// returned Locker's sticky error.
func (l *Locker) Keyspace(s keyspace.Strategy) *Locker {
	v := *l
	if s == nil {
		v.cfg.fail(errors.New("sqllock: Locker.Keyspace: nil keyspace.Strategy"))
		return &v
	}
	v.cfg.strategy = s
	return &v
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
	l.sessions.Init(&m.t, m.t.Name, k)
	return m
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
