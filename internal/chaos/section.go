package chaos

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"os"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// stmtTimeout bounds each access to the counter.
const stmtTimeout = 5 * time.Second

// errTerminated is the cause of a section's end when withlock, having lost
// the lock, sends it SIGTERM.
var errTerminated = errors.New("chaos: section terminated by withlock (lock lost)")

// A section runs critical sections of one worker: read the counter, work a
// random while, write the counter plus one, each access carrying the token.
type section struct {
	db     *sql.DB
	rec    *Recorder
	worker string
	holder int // pid of the process holding the lock
	fenced bool
	rng    *rand.Rand
	min    time.Duration
	max    time.Duration
}

func newSection(s Spec, db *sql.DB, rec *Recorder, holder int) *section {
	return &section{
		db: db, rec: rec, worker: s.Worker, holder: holder, fenced: s.Fenced,
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid()))),
		min: s.WorkMin, max: s.WorkMax,
	}
}

// run runs one critical section under token, granted at start, and records
// its beginning and end. ctx ends when the lock is reported lost.
func (s *section) run(ctx context.Context, token uint64, start time.Time) error {
	if err := s.rec.Write(Record{Ev: EvBegin, Worker: s.worker, PID: os.Getpid(), Holder: s.holder, Token: token, T: start.UnixNano()}); err != nil {
		return err
	}
	outcome, err := s.access(ctx, token)
	end := Record{Ev: EvEnd, Worker: s.worker, PID: os.Getpid(), Holder: s.holder, Token: token, T: time.Now().UnixNano(), Outcome: outcome}
	if err != nil {
		end.Err = err.Error()
	}
	return s.rec.Write(end)
}

// access does the section's work and says how it ended.
func (s *section) access(ctx context.Context, token uint64) (string, error) {
	readQ, writeQ := readUnfencedSQL, writeUnfencedSQL
	if s.fenced {
		readQ, writeQ = readFencedSQL, writeFencedSQL
	}
	tok := int64(token)
	var v int64
	qctx, cancel := context.WithTimeout(ctx, stmtTimeout)
	err := s.db.QueryRowContext(qctx, readQ, tok, s.worker).Scan(&v)
	cancel()
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return OutRefusedRead, nil
	case err != nil:
		return failure(ctx, err)
	}

	work := s.min
	if s.max > s.min {
		work += time.Duration(s.rng.Int64N(int64(s.max - s.min)))
	}
	t := time.NewTimer(work)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return failure(ctx, ctx.Err())
	}

	var n int64
	qctx, cancel = context.WithTimeout(ctx, stmtTimeout)
	err = s.db.QueryRowContext(qctx, writeQ, tok, s.worker, v+1).Scan(&n)
	cancel()
	switch {
	case err != nil:
		return failure(ctx, err)
	case n == 0:
		return OutRefusedWrite, nil
	}
	return OutWrote, nil
}

// failure classifies an access that failed: lost if the lock was reported
// lost, else an error.
func failure(ctx context.Context, err error) (string, error) {
	if cause := context.Cause(ctx); cause != nil && (errors.Is(cause, sqllock.ErrLockLost) || errors.Is(cause, errTerminated)) {
		return OutLost, cause
	}
	return OutError, err
}
