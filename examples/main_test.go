package examples_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// localDSN is the server tried when PG_CONNECTION_STRING is not set.
const localDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// tables are the tables the examples create; they are dropped before and
// after the run, so every run starts from an empty database and the examples'
// output does not depend on earlier runs.
var tables = []string{
	"examples_goose_version", "examples_invoices",
	"examples_goose_lock_version", "examples_backfill",
	"examples_gorm_runs", "examples_sqlx_runs", "examples_bun_runs",
	"examples_ledger",
}

// TestMain finds Postgres for the examples, which read PG_CONNECTION_STRING:
// the variable itself if set (it must answer), else the local server if it
// answers. Examples cannot skip one by one, so without a server none runs:
// that fails under CI=true and is reported and passed otherwise.
func TestMain(m *testing.M) {
	dsn := os.Getenv("PG_CONNECTION_STRING")
	if dsn == "" {
		if err := ping(localDSN); err != nil {
			if os.Getenv("CI") == "true" {
				fmt.Fprintf(os.Stderr, "no Postgres: PG_CONNECTION_STRING is not set and %s: %v\n", localDSN, err)
				os.Exit(1)
			}
			fmt.Printf("no Postgres: examples not run (PG_CONNECTION_STRING is not set and %s: %v)\n", localDSN, err)
			os.Exit(0)
		}
		dsn = localDSN
		os.Setenv("PG_CONNECTION_STRING", dsn)
	} else if err := ping(dsn); err != nil {
		fmt.Fprintln(os.Stderr, "no Postgres at PG_CONNECTION_STRING:", err)
		os.Exit(1)
	}
	if err := dropTables(dsn); err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := dropTables(dsn); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, "examples:", err)
		code = 1
	}
	os.Exit(code)
}

func ping(dsn string) error {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

func dropTables(dsn string) error {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, t := range tables {
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
			return fmt.Errorf("dropping %s: %w", t, err)
		}
	}
	return nil
}
