package sqltext

import (
	"crypto/rand"
	"database/sql/driver"
	"encoding/hex"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// A Verify checks a server session before the first lock a Locker
// takes on it (see BuildVerify). It carries the owner token of the
// session's client connection: as a bind parameter, or written into the
// text between parts.
type Verify struct {
	text  string
	parts []string
}

// Statement returns the verify Statement and its arguments for the
// session owned by the client connection at addr (see drv.SessionOwner).
func (s *Verify) Statement(addr uintptr) (string, []driver.NamedValue) {
	token := OwnerToken(addr)
	if s.parts == nil {
		return s.text, []driver.NamedValue{{Ordinal: 1, Value: token}}
	}
	return strings.Join(s.parts, token), nil
}

// BuildVerify builds the statement that verifies a server session before
// the first lock on it. It answers with one integer (one column keeps the
// drivers' per-column work off the path): the backend pid, for the
// keep-alive, the guarded lock statements and the settling of an
// abandoned session, times 32, plus these flags:
//
//	2  refused: the server is a standby in recovery, whose locks
//	   exclude nobody (unless standbys are allowed)
//	4  refused: the session carries another client connection's owner
//	   token (see OwnerGUC)
//	8  refused: the server's advisory-lock functions lock nothing
//	   (CockroachDB: they answer true and take nothing)
//
// A session without a token (new, or reset by DISCARD ALL) gets this
// connection's. CASE evaluates its branches in order, and only the branch
// taken, so a standby is not marked. It takes no lock: a lock is taken
// only on a session whose pid is known, so that a session abandoned in an
// unknown state can always be found on the server (see settle.Settler.End).
func BuildVerify(placeholders, allowStandby bool) *Verify {
	token := "'" + TokenMark + "'"
	if placeholders {
		token = "$1::text"
	}
	foreign := "coalesce(nullif(current_setting('" + OwnerGUC + "', true), ''), set_config('" + OwnerGUC + "', " + token + ", false)) <> " + token
	refuse := ""
	if !allowStandby {
		refuse = "WHEN pg_is_in_recovery() THEN 2 "
	}
	text := "SELECT pg_backend_pid()::int8*32 + CASE " + stubbed + refuse + "WHEN " + foreign + " THEN 4 ELSE 0 END"
	if placeholders {
		return &Verify{text: text}
	}
	return &Verify{parts: strings.Split(text, TokenMark)}
}

// ProbeSQL is the keep-alive query: it proves the session is alive and
// still the one that took the lock.
const ProbeSQL = "SELECT pg_backend_pid()"

// OwnerGUC is the custom setting that marks a server session with the
// owner token of the client connection that first took a sqllock lock on
// it. Without a pooler, a session has one client connection for its whole
// life and always shows that connection's token. A session that shows
// another connection's token is shared between clients, as behind a
// transaction-mode pooler, where a second client's lock would be granted
// re-entrantly: the lock statement refuses it. The mark is set once per
// session, not per lock, so the hot path reads a setting but never writes
// one (docs/design.md has what writing it on every lock cost).
const OwnerGUC = "sqllock.owner"

// ProcessToken tells this process's connections from other processes':
// random, made once per process. Immutable.
var ProcessToken = sync.OnceValue(func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:]) + "-"
})

// ConnAddr returns the address of driver connection dc, which no other
// live connection of this process shares; it is 0 for a driver connection
// that is not a pointer (no known driver), which then shares its owner
// token with every other such connection of the process.
func ConnAddr(dc any) uintptr {
	if v := reflect.ValueOf(dc); v.Kind() == reflect.Pointer {
		return v.Pointer()
	}
	return 0
}

// OwnerToken returns the owner token of the driver connection at addr:
// the process token and the address.
func OwnerToken(addr uintptr) string {
	return ProcessToken() + strconv.FormatUint(uint64(addr), 36)
}

// Flags of the verify statement's answer (see BuildVerify); FlagGranted
// marks a granted lock in an outcome.
const (
	FlagGranted = 1
	FlagStandby = 2
	FlagForeign = 4
	FlagStub    = 8
	AnswerShift = 5
	// FlagProxied is no answer of the verify statement's: the session is
	// not the client connection's own (see drv.StartupPID), as behind a
	// pooler, and its locks are held in a transaction (see Held).
	FlagProxied = 16
	// FlagRefused are the flags that refuse a session for a lock as it
	// is taken by default.
	FlagRefused = FlagStandby | FlagForeign | FlagStub | FlagProxied
)

// TextWith returns the statement's text with token where the owner token
// goes, or its text with the token as a parameter: the statement as a
// test or a message shows it.
func (s *Verify) TextWith(token string) string {
	if s.parts == nil {
		return s.text
	}
	return strings.Join(s.parts, token)
}

// stubbed is the verify statement's first branch: servers that speak
// PostgreSQL's protocol and have its advisory-lock functions as stubs,
// told apart by version(). CockroachDB's pg_advisory_lock family answers
// true and locks nothing (cockroachdb/cockroach#13546). YugabyteDB's
// raise an error unless its advisory locks are turned on, and then lock.
const stubbed = "WHEN version() LIKE 'CockroachDB%' THEN 8 "
