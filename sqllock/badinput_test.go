package sqllock_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// A wrong password: the error names the lock and its key, and the password
// appears nowhere in it.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "password_encryption=scram-sha-256")
	admin, err := sql.Open("pgx", c.DSN())
	require.NoError(t, err)
	defer admin.Close()
	_, err = admin.ExecContext(t.Context(), "CREATE ROLE locker LOGIN PASSWORD 'right-horse-battery'")
	require.NoError(t, err)
	// Passwords for everyone but the superuser over TCP.
	hba := "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n"
	require.NoError(t, os.WriteFile(filepath.Join(c.Dir(), "pg_hba.conf"), []byte(hba), 0o600))
	if out, err := c.PGCtl(t, "reload"); err != nil {
		t.Fatalf("pg_ctl reload: %v\n%s", err, out)
	}
	const wrong = "wrong-staple-7781"
	dsn := fmt.Sprintf("postgres://locker:%s@127.0.0.1:%d/postgres?sslmode=disable", wrong, c.Port())
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db, err := sql.Open(driver, dsn)
			require.NoError(t, err)
			defer db.Close()
			mu := sqllock.New(db).Mutex("billing")
			err = mu.Lock(t.Context())
			require.Error(t, err)
			t.Logf("%s: %v", driver, err)
			assert.Contains(t, err.Error(), `"billing"`)
			assert.Contains(t, err.Error(), mu.Key().String())
			assert.Contains(t, err.Error(), "password authentication failed")
			assert.NotContains(t, err.Error(), wrong, "the password must never appear")
		})
	}
}

// A lock name is hashed into integers: whatever it contains never reaches
// the SQL text.
func TestLockNameNeverInSQL(t *testing.T) {
	db, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(sqlmock.QueryMatcherFunc(func(_, actual string) error {
		if strings.Contains(actual, "DROP") || strings.Contains(actual, "evil") {
			return fmt.Errorf("the lock name reached SQL: %s", actual)
		}
		return nil
	})))
	require.NoError(t, err)
	defer db.Close()
	mock.ExpectQuery("").WillReturnRows(sqlmock.NewRows([]string{"answer"}).AddRow(int64(1 << 5)))
	mock.ExpectQuery("").WillReturnRows(sqlmock.NewRows([]string{"granted"}).AddRow(true))
	mock.ExpectExec("").WillReturnResult(sqlmock.NewResult(0, 1))
	mu := sqllock.New(db, sqllock.WithKeepAlive(0, 0)).Mutex("evil'); DROP TABLE users; --")
	require.NoError(t, mu.Lock(context.Background()))
	require.NoError(t, mu.Unlock(context.Background()))
	require.NoError(t, mock.ExpectationsWereMet())
}
