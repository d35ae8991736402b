package conntest_test

import (
	"database/sql"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/advisorylock/go-advisory-lock/conntest"
)

// lockSemantics is what a project puts in its own tests, as
// TestLockSemantics, to prove that its driver, pooler and database give
// real lock semantics: Run fails the test, naming the broken property, on
// a setup that does not (a transaction-mode pooler, a hot standby, a
// driver that ignores cancellation).
func lockSemantics(t *testing.T) {
	dsn := os.Getenv("DATABASE_URL") // the same DSN, pooler and driver as production
	if dsn == "" {
		t.Skip("DATABASE_URL not set")
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conntest.Run(t, db)
}

// Example shows the test a project adds; see lockSemantics above.
func Example() {
	_ = lockSemantics
}
