package session

import (
	"context"
	"log/slog"
)

// A held lock pins a connection of the pool until it is released. When the
// locks a process holds fill the pool (SetMaxOpenConns(1) with one lock),
// every other query on that *sql.DB, including the work inside WithLock's
// function, waits for a free connection until its context ends, with no
// error to say why. warnPoolFull says so once per Manager, at Warn, to
// Config.Logger, else to slog.Default().

// warnFewConns logs, once per Manager, that the pool cannot open the
// sessions Config.Multiplex asks for, plus one to wait in the server for a
// lock another process holds: locks beyond them wait for a connection,
// with nothing to say why.
func (m *Manager) warnFewConns(t *Target) {
	if m.warnedFewConns.Load() {
		return
	}
	limit := m.db.Stats().MaxOpenConnections
	if limit == 0 || limit > m.cfg.Multiplex || !m.warnedFewConns.CompareAndSwap(false, true) {
		return
	}
	m.logger().LogAttrs(context.Background(), slog.LevelWarn,
		"sqllock: the connection pool cannot open the sessions WithSessions asks for, plus one to wait for a lock held elsewhere: locks beyond them wait for a connection until their context ends; raise SetMaxOpenConns above WithSessions, or share one Locker's sessions between keyspaces (Locker.Keyspace)",
		slog.String("lock", t.Name), slog.Int("sessions", m.cfg.Multiplex), slog.Int("max_open_conns", limit))
}

// logger is where the Manager's warnings go: Config.Logger, else
// slog.Default().
func (m *Manager) logger() *slog.Logger {
	if m.cfg.Logger != nil {
		return m.cfg.Logger
	}
	return slog.Default()
}

// warnPoolFull logs, once per Manager, that the lock of t just taken left
// no free connection in the pool.
func (m *Manager) warnPoolFull(t *Target) {
	if m.warnedPoolFull.Load() {
		return
	}
	st := m.db.Stats()
	if st.MaxOpenConnections == 0 || st.InUse < st.MaxOpenConnections {
		return
	}
	if !m.warnedPoolFull.CompareAndSwap(false, true) {
		return
	}
	m.logger().LogAttrs(context.Background(), slog.LevelWarn,
		"sqllock: held locks fill the connection pool: every other query on this *sql.DB, including the work inside WithLock, waits for a free connection until its context ends; raise SetMaxOpenConns above the number of locks held at once",
		slog.String("lock", t.Name), slog.String("key", t.Key.String()),
		slog.Int("max_open_conns", st.MaxOpenConnections), slog.Int("in_use", st.InUse))
}
