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
	logger := m.cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.LogAttrs(context.Background(), slog.LevelWarn,
		"sqllock: held locks fill the connection pool: every other query on this *sql.DB, including the work inside WithLock, waits for a free connection until its context ends; raise SetMaxOpenConns above the number of locks held at once",
		slog.String("lock", t.Name), slog.String("key", t.Key.String()),
		slog.Int("max_open_conns", st.MaxOpenConnections), slog.Int("in_use", st.InUse))
}
