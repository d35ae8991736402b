package session

import (
	"database/sql"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

func TestLockAnswer(t *testing.T) {
	for _, v := range []any{int64(7<<sqltext.AnswerShift | sqltext.FlagGranted), []byte("225"), "225"} {
		n, err := lockAnswer(v)
		assert.NoError(t, err)
		assert.Equal(t, int64(225), n, "answer %#v", v)
	}
}

// An explicit choice of SQL shape overrides what the driver would get.
func TestPlaceholdersOverrideDetection(t *testing.T) {
	db := sql.OpenDB(&fakedriver.Connector{})
	t.Cleanup(func() { _ = db.Close() })
	for _, on := range []bool{false, true} {
		m := New(Config{DB: db, Placeholders: &on})
		assert.Equal(t, on, m.placeholders, "Placeholders %v", on)
		assert.False(t, m.prepared, "Placeholders %v: nothing prepared", on)
	}
}
