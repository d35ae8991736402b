package chaos

import (
	"context"
	"database/sql"
	"fmt"
)

// The protected resource is one counter row; every access to it, reads
// included, is kept in chaos_access, whose seq orders accesses as the row's
// lock ordered them (the sequence is drawn after the row is locked).
const schemaSQL = `
CREATE TABLE chaos_counter (
	id    int PRIMARY KEY,
	value bigint NOT NULL,
	fence bigint NOT NULL -- the newest token that touched the row
);
INSERT INTO chaos_counter VALUES (1, 0, 0);
CREATE TABLE chaos_access (
	seq    bigserial PRIMARY KEY,
	worker text NOT NULL,
	token  bigint NOT NULL,
	kind   text NOT NULL, -- read or write
	value  bigint NOT NULL, -- read: the value read; write: the value written
	at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE SEQUENCE chaos_token;
`

// Fenced accesses: each claims the row for its token and is refused (no
// row) once a newer token has touched it. A grant's token is unique, so <=
// lets one grant read and then write.
const (
	readFencedSQL = `WITH r AS (
	UPDATE chaos_counter SET fence = $1::bigint WHERE id = 1 AND fence <= $1::bigint RETURNING value
), a AS (
	INSERT INTO chaos_access (worker, token, kind, value) SELECT $2::text, $1::bigint, 'read', value FROM r
) SELECT value FROM r`

	writeFencedSQL = `WITH w AS (
	UPDATE chaos_counter SET value = $3::bigint, fence = $1::bigint WHERE id = 1 AND fence <= $1::bigint RETURNING value
), a AS (
	INSERT INTO chaos_access (worker, token, kind, value) SELECT $2::text, $1::bigint, 'write', value FROM w
) SELECT count(*) FROM w`
)

// Unfenced accesses: the same rows in chaos_access, but nothing refused.
const (
	readUnfencedSQL = `WITH r AS (
	SELECT value FROM chaos_counter WHERE id = 1
), a AS (
	INSERT INTO chaos_access (worker, token, kind, value) SELECT $2::text, $1::bigint, 'read', value FROM r
) SELECT value FROM r`

	writeUnfencedSQL = `WITH w AS (
	UPDATE chaos_counter SET value = $3::bigint, fence = greatest(fence, $1::bigint) WHERE id = 1 RETURNING value
), a AS (
	INSERT INTO chaos_access (worker, token, kind, value) SELECT $2::text, $1::bigint, 'write', value FROM w
) SELECT count(*) FROM w`
)

// roleName is the database role of a worker. Each worker signs in as a role
// of its own, so that pg_stat_activity tells whose session holds the lock.
func roleName(worker string) string { return "chaos_" + worker }

// createSchema creates the tables and one role per worker.
func createSchema(ctx context.Context, locks, counter *sql.DB, workers []string) error {
	if counter == nil {
		counter = locks
	}
	if _, err := counter.ExecContext(ctx, schemaSQL); err != nil {
		return fmt.Errorf("chaos: creating tables: %w", err)
	}
	for _, w := range workers {
		r := roleName(w)
		if counter != locks {
			if _, err := locks.ExecContext(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN`, r)); err != nil {
				return fmt.Errorf("chaos: creating role %s: %w", r, err)
			}
		}
		stmt := fmt.Sprintf(`CREATE ROLE %[1]s LOGIN;
GRANT SELECT, INSERT, UPDATE ON chaos_counter, chaos_access TO %[1]s;
GRANT USAGE ON SEQUENCE chaos_access_seq_seq, chaos_token TO %[1]s`, r)
		if _, err := counter.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("chaos: creating role %s: %w", r, err)
		}
	}
	return nil
}

// An Access is one row of chaos_access: an access to the counter that the
// database accepted.
type Access struct {
	Seq    int64
	Worker string
	Token  uint64
	Kind   string // "read" or "write"
	Value  int64
}

// readHistory returns every accepted access in seq order, and the counter's
// final value.
func readHistory(ctx context.Context, db *sql.DB) ([]Access, int64, error) {
	rows, err := db.QueryContext(ctx, `SELECT seq, worker, token, kind, value FROM chaos_access ORDER BY seq`)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: reading history: %w", err)
	}
	defer rows.Close()
	var h []Access
	for rows.Next() {
		var a Access
		var tok int64
		if err := rows.Scan(&a.Seq, &a.Worker, &tok, &a.Kind, &a.Value); err != nil {
			return nil, 0, fmt.Errorf("chaos: reading history: %w", err)
		}
		a.Token = uint64(tok)
		h = append(h, a)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("chaos: reading history: %w", err)
	}
	var final int64
	if err := db.QueryRowContext(ctx, `SELECT value FROM chaos_counter WHERE id = 1`).Scan(&final); err != nil {
		return nil, 0, fmt.Errorf("chaos: reading the counter: %w", err)
	}
	return h, final, nil
}
