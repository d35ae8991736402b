//go:build tools

package deps

import (
	_ "github.com/DATA-DOG/go-sqlmock"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
	_ "gorm.io/driver/postgres"
	_ "gorm.io/gorm"
)
