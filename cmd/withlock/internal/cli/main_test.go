package cli

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
