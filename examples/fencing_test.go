package examples_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// errStale is what a write carrying an older fencing token gets: a newer
// holder of the lock has been at the resource since.
var errStale = errors.New("stale fencing token: a newer holder has taken over")

// addToLedger adds amount to the ledger, fenced by token, in the caller's
// own transaction: the first statement claims the row for the token, or
// finds that a newer token already has, and the write commits only with
// the claim.
func addToLedger(ctx context.Context, db *sql.DB, token uint64, amount int64) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var balance int64
	err = tx.QueryRowContext(ctx,
		`UPDATE examples_ledger SET fence = $1 WHERE id = 1 AND fence <= $1 RETURNING balance`,
		int64(token)).Scan(&balance)
	if errors.Is(err, sql.ErrNoRows) {
		return errStale
	}
	if err != nil {
		return err
	}
	// ... work out the new state from what was read ...
	if _, err := tx.ExecContext(ctx, `UPDATE examples_ledger SET balance = $1 WHERE id = 1`, balance+amount); err != nil {
		return err
	}
	return tx.Commit()
}

func Example_fencingInPostgres() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	// The protected row remembers the largest token that has touched it.
	_, err = db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS examples_ledger (
		id int PRIMARY KEY, balance bigint NOT NULL, fence bigint NOT NULL DEFAULT 0)`)
	if err != nil {
		log.Fatal(err)
	}
	if _, err = db.ExecContext(ctx, `INSERT INTO examples_ledger VALUES (1, 0) ON CONFLICT DO NOTHING`); err != nil {
		log.Fatal(err)
	}

	mu := sqllock.New(db, sqllock.WithFencing()).Mutex("examples/ledger")
	var first uint64
	for range 2 {
		err = mu.WithLock(ctx, func(ctx context.Context) error {
			token, _ := sqllock.Token(ctx)
			if first == 0 {
				first = token
			}
			return addToLedger(ctx, db, token, 100)
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// A holder that stalled with the first lock, lost it, and wakes up now
	// to finish its write: the row has seen a newer token.
	fmt.Println("late write:", addToLedger(ctx, db, first, 100))

	var balance int64
	if err := db.QueryRowContext(ctx, `SELECT balance FROM examples_ledger WHERE id = 1`).Scan(&balance); err != nil {
		log.Fatal(err)
	}
	fmt.Println("balance:", balance)
	// Output:
	// late write: stale fencing token: a newer holder has taken over
	// balance: 200
}

// fencedStore stands for a system outside PostgreSQL that the lock
// protects: an object store, a search index, a payment API. It keeps the
// largest token it has seen and refuses a write carrying a smaller one,
// which is what a conditional write does (an S3 PUT with If-Match on a
// version that carries the token, a DynamoDB ConditionExpression
// "fence <= :token", an etcd transaction comparing a key's value).
type fencedStore struct {
	mu    sync.Mutex
	fence uint64
	data  map[string]string
}

func (s *fencedStore) Put(token uint64, key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.fence {
		return fmt.Errorf("put %s with token %d: %w", key, token, errStale)
	}
	s.fence = token
	s.data[key] = value
	return nil
}

func Example_fencingElsewhere() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store := &fencedStore{data: map[string]string{}}
	mu := sqllock.New(db, sqllock.WithFencing()).Mutex("examples/report")

	var stale uint64
	for _, run := range []string{"monday", "tuesday"} {
		err = mu.WithLock(context.Background(), func(ctx context.Context) error {
			token, _ := sqllock.Token(ctx)
			if stale == 0 {
				stale = token
			}
			// Send the token with every write the lock protects.
			return store.Put(token, "report.csv", run)
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// The first holder, waking from a pause it did not notice:
	err = store.Put(stale, "report.csv", "monday, again")
	fmt.Println("refused:", errors.Is(err, errStale))
	fmt.Println("report:", store.data["report.csv"])
	// Output:
	// refused: true
	// report: tuesday
}
