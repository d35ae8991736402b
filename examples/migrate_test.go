package examples_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_migrationsAtStartup() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// The migrations. In an application, embed a directory of them:
	//	//go:embed migrations/*.sql
	//	var embedded embed.FS
	// and pass fs.Sub(embedded, "migrations").
	migrations := fstest.MapFS{
		"00001_create_invoices.sql": {Data: []byte(`-- +goose Up
CREATE TABLE examples_invoices (id bigint PRIMARY KEY, total_cents bigint NOT NULL);
-- +goose Down
DROP TABLE examples_invoices;
`)},
	}
	// No goose locker: sqllock's lock below does that job. (Do not call
	// provider.Close: it closes db.)
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations,
		goose.WithTableName("examples_goose_version"))
	if err != nil {
		log.Fatal(err)
	}

	// Every instance runs this at start-up, before it serves: the first one
	// migrates, the others wait for it and then find nothing to do. Name the
	// lock "dbmigration" and `withlock dbmigration -- goose up` run by hand
	// or by a deploy script excludes it too.
	ctx := context.Background()
	err = sqllock.New(db).Mutex("examples/dbmigration").WithLock(ctx, func(ctx context.Context) error {
		results, err := provider.Up(ctx) // ctx is cancelled if the lock is lost
		for _, r := range results {
			fmt.Println("applied", r.Source.Path)
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	pending, err := provider.HasPending(ctx)
	fmt.Println("pending:", pending, err)
	fmt.Println("serving")
	// Output:
	// applied 00001_create_invoices.sql
	// pending: false <nil>
	// serving
}

func Example_gooseSessionLocker() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// Somewhere, goose migrates with its own session lock ...
	sessionLocker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		log.Fatal(err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, fstest.MapFS{
		"00001_create_backfill.sql": {Data: []byte(`-- +goose Up
CREATE TABLE examples_backfill (id bigint PRIMARY KEY);
-- +goose Down
DROP TABLE examples_backfill;
`)},
	}, goose.WithTableName("examples_goose_lock_version"), goose.WithSessionLocker(sessionLocker))
	if err != nil {
		log.Fatal(err)
	}

	// ... which locks one fixed key, keyspace.Goose (keyspace.Lookup("goose")
	// from configuration). Holding it waits for a goose run in progress and
	// keeps goose out while a job runs, such as a backfill that must see one
	// schema from start to end.
	gooseLock := sqllock.New(db, sqllock.WithKeyspace(keyspace.Goose)).Mutex("goose")
	fmt.Println("goose's lock:", gooseLock.Key())
	ctx := context.Background()
	err = gooseLock.WithLock(ctx, func(ctx context.Context) error {
		// The backfill would run here. goose, meanwhile, retries its lock
		// until its timeout, or as here until its ctx ends.
		gooseCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := provider.Up(gooseCtx)
		fmt.Println("goose kept out:", errors.Is(err, context.DeadlineExceeded))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Released: goose gets in.
	results, err := provider.Up(ctx)
	for _, r := range results {
		fmt.Println("goose applied", r.Source.Path)
	}
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// goose's lock: int64(4097083626)
	// goose kept out: true
	// goose applied 00001_create_backfill.sql
}
