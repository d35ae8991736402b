package sqltext

// LookSQL reports how backend $1 stands towards the advisory lock ($2,
// $3, $4), or towards any advisory lock when they are NULL (a session that
// carries many): no row once it has exited; else its state in
// pg_stat_activity ("active" while it runs a statement, NULL where the role
// may not see it) and whether it holds or waits for the lock.
const LookSQL = `SELECT a.state, EXISTS (SELECT 1 FROM pg_locks l
	WHERE l.locktype = 'advisory' AND l.pid = a.pid AND ` + LockTagMatch + `)
FROM pg_stat_activity a WHERE a.pid = $1 AND a.pid <> pg_backend_pid()`

// LockTagMatch matches pg_locks rows of the advisory lock ($2, $3, $4), or
// of any when they are NULL.
const LockTagMatch = `($2::int8 IS NULL OR (classid::int8 = $2 AND objid::int8 = $3 AND objsubid::int8 = $4))`

// TerminateSQL terminates the backend $1 if it holds or waits for the
// advisory lock ($2, $3, $4) (see keyspace.Key.LockTag; any when they are
// NULL), and waits up to $5 milliseconds for it to exit. It answers one
// row per lock entry found: true once the backend has exited. A session
// never terminates itself.
const TerminateSQL = `SELECT pg_terminate_backend(pid, $5::int8) FROM pg_locks
WHERE locktype = 'advisory' AND pid = $1 AND ` + LockTagMatch + `
	AND pid <> pg_backend_pid()`

// TerminateSQL13 is TerminateSQL for PostgreSQL 13 and older, whose
// pg_terminate_backend does not wait; terminate then polls pg_locks.
const TerminateSQL13 = `SELECT pg_terminate_backend(pid) FROM pg_locks
WHERE locktype = 'advisory' AND pid = $1 AND ` + LockTagMatch + `
	AND pid <> pg_backend_pid()`
