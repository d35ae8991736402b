package sqltext

import (
	"fmt"
	"strconv"
	"strings"
)

// FencedToken is the SQL of a fencing token, evaluated only after the
// lock statement's grant: a CASE evaluates a branch only when it is taken.
// pg_logical_emit_message with transactional true assigns the statement
// a transaction id and writes WAL, which makes its commit a flushed one
// (a transaction that writes no WAL commits without a flush, and after a
// crash its id is handed out again); set_config with is_local true makes
// that flush synchronous for this transaction alone where the session
// turned synchronous_commit off. The answer is the server's timeline (the
// first 8 hex digits of a WAL file's name) and the transaction id, which
// FencedAnswer makes a token of.
const FencedToken = "CASE WHEN pg_logical_emit_message(true, 'sqllock', '') IS NOT NULL" +
	" AND (current_setting('synchronous_commit') <> 'off' OR set_config('synchronous_commit', 'on', true) <> '')" +
	" THEN left(pg_walfile_name(pg_current_wal_lsn()), 8) || ' ' || pg_current_xact_id()::text END"

// Fence turns q's exclusive lock statements into fenced ones, which answer
// a grant's timeline and transaction id (see FencedToken), '0' for a try
// that found the lock taken, or no row for another session (see
// Build).
func (q *Queries) Fence() {
	q.fenced = true
	q.assemble()
}

// A token is the timeline in the high bits of a non-negative int64 and
// the 64-bit transaction id in the low ones, so that every token of a
// timeline is larger than every token of the timelines before it. 16 bits
// hold 65535 timelines, 47 bits 257 years of 1.5 billion ids a day
// (docs/design.md#fencing-tokens).
const (
	TokenXidBits     = 47
	MaxTokenXid      = 1<<TokenXidBits - 1
	MaxTokenTimeline = 1<<(63-TokenXidBits) - 1
)

// FencedAnswer reads a fenced lock statement's answer: "0" when a try
// found the lock taken, else the grant's timeline and transaction id (see
// FencedToken), which it returns as a token.
func FencedAnswer(v any) (uint64, error) {
	var s string
	switch a := v.(type) {
	case string:
		s = a
	case []byte:
		s = string(a)
	}
	if s == "0" {
		return 0, nil
	}
	tl, xid, ok := strings.Cut(s, " ")
	timeline, terr := strconv.ParseUint(tl, 16, 32)
	id, xerr := strconv.ParseUint(xid, 10, 64)
	if !ok || len(tl) != 8 || terr != nil || xerr != nil || timeline == 0 {
		return 0, fmt.Errorf("the fenced lock statement answered %T %v, not a token: whether the session holds the lock is unknown, so it is discarded", v, v)
	}
	return FencingToken(timeline, id)
}

// FencingToken lays out the token of a grant on timeline with transaction
// id xid. Out of range, it is an error, never a token that sorts wrong.
func FencingToken(timeline, xid uint64) (uint64, error) {
	if timeline > MaxTokenTimeline || xid > MaxTokenXid {
		return 0, fmt.Errorf("no fencing token for timeline %d and transaction id %d: a token holds timelines up to %d and ids up to %d (docs/design.md#fencing-tokens); the session is discarded, which releases the lock",
			timeline, xid, MaxTokenTimeline, uint64(MaxTokenXid))
	}
	return timeline<<TokenXidBits | xid, nil
}
