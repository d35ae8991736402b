// Package chaos is the chaos run of go-advisory-lock: worker processes
// contend for one lock while faults are injected, and a checker proves from
// what they recorded and what the database kept that fencing tokens kept
// every stale holder away from the protected resource.
//
// # The run
//
// [Run] starts the workers against a dedicated cluster (a primary with a
// synchronous streaming standby, from internal/pgtest), each through
// loopback proxies of its own (internal/tcpproxy), so that one worker's
// network can go silent while the others go on:
//
//   - library workers are this program run again as a child (see [Child]),
//     taking the lock with sqllock's WithLock on lib/pq or pgx;
//   - withlock workers run the withlock command in a loop, whose command is
//     this program again, running one critical section.
//
// Every critical section reads a counter row, works a random while, and
// writes the counter plus one; with fencing both the read and the write
// carry the section's fencing token and are refused once a newer token has
// touched the row (see section.go). Every access is kept in an append-only
// table.
//
// Meanwhile faults are injected at random, one at a time: a holder paused
// with SIGSTOP past the loss bound, a holder killed with SIGKILL, the
// holder's backend terminated, the server restarted (immediate and fast in
// turn), the holder's network silenced, and a failover to the standby.
//
// # The checker
//
// [Check] is a pure function of what the run produced: the workers'
// records of their critical sections, the access table, the fault log and
// the locks left behind. Its [Result] says what the report says and lists
// every violation; a run with a violation fails.
package chaos
