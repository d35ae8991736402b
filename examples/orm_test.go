package examples_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	"github.com/jmoiron/sqlx"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"
	"gorm.io/gorm/schema"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_gorm() {
	gdb, err := gorm.Open(postgres.Open(os.Getenv("PG_CONNECTION_STRING")), &gorm.Config{
		NamingStrategy: schema.NamingStrategy{TablePrefix: "examples_gorm_"},
		Logger:         logger.Discard, // keep this example's output its own
	})
	if err != nil {
		log.Fatal(err)
	}
	db, err := gdb.DB() // gorm's *sql.DB: lock over it
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// Each held lock pins one connection of gorm's pool until it is
	// released: leave room for it beside gorm's own queries.
	db.SetMaxOpenConns(10)

	type Run struct {
		Job string `gorm:"primaryKey"`
		Day string `gorm:"primaryKey"`
	}
	locker := sqllock.New(db)
	err = locker.Mutex("examples/gorm/nightly").WithLock(context.Background(), func(ctx context.Context) error {
		// Work through gorm with fn's ctx: it is cancelled if the lock is lost.
		tx := gdb.WithContext(ctx)
		if err := tx.AutoMigrate(&Run{}); err != nil {
			return err
		}
		// Record the run once, however often the job runs that day.
		run := Run{Job: "nightly", Day: "2025-01-31"}
		if err := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&run).Error; err != nil {
			return err
		}
		var n int64
		if err := tx.Model(&Run{}).Where("job = ?", "nightly").Count(&n).Error; err != nil {
			return err
		}
		fmt.Println("nightly runs recorded:", n)
		fmt.Println("connections in use (the lock's):", db.Stats().InUse)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// nightly runs recorded: 1
	// connections in use (the lock's): 1
}

func Example_gormLockTx() {
	gdb, err := gorm.Open(postgres.Open(os.Getenv("PG_CONNECTION_STRING")), &gorm.Config{
		Logger: logger.Discard, // keep this example's output its own
	})
	if err != nil {
		log.Fatal(err)
	}
	db, err := gdb.DB()
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	mu := sqllock.New(db).Mutex("examples/gorm/invoice-42")

	// A transaction-scoped lock, released at commit or rollback: the kind that
	// works behind a transaction-mode pooler such as PgBouncer. It pins no
	// connection beyond the transaction's own.
	err = gdb.Transaction(func(tx *gorm.DB) error {
		// tx.Statement.ConnPool is the transaction under gorm: a *sql.Tx,
		// or a *gorm.PreparedStmtTX with PrepareStmt (Example_gormPrepareStmtLockTx).
		ctx := context.Background()
		if err := mu.LockTx(ctx, tx.Statement.ConnPool); err != nil {
			return err
		}
		fmt.Println("invoice 42 locked until commit")
		// Another session cannot take it meanwhile.
		other, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer other.Rollback()
		ok, err := mu.TryLockTx(ctx, other)
		fmt.Println("another transaction got it:", ok, err)
		return tx.Exec("SELECT 1").Error // the work, through gorm's tx
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// invoice 42 locked until commit
	// another transaction got it: false <nil>
}

func Example_gormPrepareStmtLockTx() {
	gdb, err := gorm.Open(postgres.Open(os.Getenv("PG_CONNECTION_STRING")), &gorm.Config{
		PrepareStmt: true,           // transactions are *gorm.PreparedStmtTX, not *sql.Tx
		Logger:      logger.Discard, // keep this example's output its own
	})
	if err != nil {
		log.Fatal(err)
	}
	db, err := gdb.DB()
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	mu := sqllock.New(db).Mutex("examples/gorm/invoice-43")
	err = gdb.Transaction(func(tx *gorm.DB) error {
		fmt.Printf("gorm's transaction: %T\n", tx.Statement.ConnPool)
		if err := mu.LockTx(context.Background(), tx.Statement.ConnPool); err != nil {
			return err
		}
		fmt.Println("invoice 43 locked until commit")
		return tx.Exec("SELECT 1").Error
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// gorm's transaction: *gorm.PreparedStmtTX
	// invoice 43 locked until commit
}

func Example_sqlxLockTx() {
	sdb, err := sqlx.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer sdb.Close()
	mu := sqllock.New(sdb.DB).Mutex("examples/sqlx/invoice-44")
	ctx := context.Background()
	tx, err := sdb.BeginTxx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	// A *sqlx.Tx is a transaction lock's Tx as it is.
	if err := mu.LockTx(ctx, tx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("invoice 44 locked until commit")
	if err := tx.Commit(); err != nil { // releases the lock
		log.Fatal(err)
	}
	// Output: invoice 44 locked until commit
}

func Example_bunLockTx() {
	sqldb, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	bdb := bun.NewDB(sqldb, pgdialect.New())
	defer bdb.Close()
	mu := sqllock.New(bdb.DB).Mutex("examples/bun/invoice-45")
	err = bdb.RunInTx(context.Background(), nil, func(ctx context.Context, tx bun.Tx) error {
		// A bun.Tx is a transaction lock's Tx as it is.
		if err := mu.LockTx(ctx, tx); err != nil {
			return err
		}
		fmt.Println("invoice 45 locked until commit")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: invoice 45 locked until commit
}

func Example_sqlx() {
	sdb, err := sqlx.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer sdb.Close()
	// sqlx.DB embeds the *sql.DB: lock over sdb.DB. Each held lock pins one
	// connection of that pool until it is released.
	locker := sqllock.New(sdb.DB)

	type Run struct {
		Job string `db:"job"`
		Day string `db:"day"`
	}
	err = locker.Mutex("examples/sqlx/nightly").WithLock(context.Background(), func(ctx context.Context) error {
		// Work through sqlx with fn's ctx: it is cancelled if the lock is lost.
		_, err := sdb.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS examples_sqlx_runs (
			job text, day text, PRIMARY KEY (job, day))`)
		if err != nil {
			return err
		}
		_, err = sdb.NamedExecContext(ctx,
			`INSERT INTO examples_sqlx_runs (job, day) VALUES (:job, :day) ON CONFLICT DO NOTHING`,
			Run{Job: "nightly", Day: "2025-01-31"})
		if err != nil {
			return err
		}
		var runs []Run
		err = sdb.SelectContext(ctx, &runs, `SELECT job, day FROM examples_sqlx_runs WHERE job = $1`, "nightly")
		fmt.Printf("nightly runs recorded: %+v\n", runs)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: nightly runs recorded: [{Job:nightly Day:2025-01-31}]
}

func Example_bun() {
	sqldb, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	bdb := bun.NewDB(sqldb, pgdialect.New())
	defer bdb.Close()
	// bun.DB embeds the *sql.DB: lock over bdb.DB. Each held lock pins one
	// connection of that pool until it is released.
	locker := sqllock.New(bdb.DB)

	type Run struct {
		bun.BaseModel `bun:"table:examples_bun_runs"`
		Job           string `bun:",pk"`
		Day           string `bun:",pk"`
	}
	err = locker.Mutex("examples/bun/nightly").WithLock(context.Background(), func(ctx context.Context) error {
		// Work through bun with fn's ctx: it is cancelled if the lock is lost.
		if _, err := bdb.NewCreateTable().Model((*Run)(nil)).IfNotExists().Exec(ctx); err != nil {
			return err
		}
		run := &Run{Job: "nightly", Day: "2025-01-31"}
		if _, err := bdb.NewInsert().Model(run).On("CONFLICT DO NOTHING").Exec(ctx); err != nil {
			return err
		}
		n, err := bdb.NewSelect().Model((*Run)(nil)).Where("job = ?", "nightly").Count(ctx)
		fmt.Println("nightly runs recorded:", n)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: nightly runs recorded: 1
}
