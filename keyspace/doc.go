// Package keyspace turns lock names into PostgreSQL advisory-lock keys.
//
// PostgreSQL identifies an advisory lock by a key in one of two disjoint key
// spaces: a single bigint (pg_advisory_lock(bigint)) or a pair of integers
// (pg_advisory_lock(int, int)). A lock taken as Int64(1) never conflicts with
// one taken as Pair(0, 1): they live in different spaces. A [Key] records both
// the numbers and the space, so the SQL used to lock it always matches.
//
// # Strategies
//
// A [Strategy] maps a lock name to a Key. Processes contend for the same lock
// only if they use the same strategy, so pick one per deployment and keep it:
//
//   - [Default] (alias of [Node]) is byte-compatible with the Node package
//     advisory-lock v1.1.1 and later: SHA-256 of the name, two little-endian
//     int32 from digest bytes 0–3 and 4–7, in the pair space. A Go process and
//     a Node process contend for the same name.
//   - [NodeLegacy] matches advisory-lock up to v1.1.0, whose second key came
//     from digest bytes 1–4.
//   - [SHA256Int64] hashes into the bigint space (first 8 digest bytes,
//     little-endian).
//   - [Scoped] gives each application or tenant its own first integer, so
//     unrelated applications sharing a database never collide.
//   - [ExplicitInt64] and [ExplicitPair] read the name as a key ("42",
//     "1,-2") instead of hashing it.
//   - [Func] adapts any function, for schemes of your own.
//
// Explicit keys need no strategy: build them with [Int64] or [Pair].
//
// # Other ecosystems
//
// These strategies reproduce, byte for byte, the keys that other libraries
// derive, so a Go process can contend with them (docs/keyspace.md lists the
// sources and versions checked):
//
//   - [SQLx]: Rust sqlx, PgAdvisoryLock::new.
//   - [WithAdvisoryLock] and [WithAdvisoryLockFromEnv]: the Ruby gem
//     with_advisory_lock.
//   - [RailsMigrations]: the lock Ruby on Rails holds while migrating; the
//     lock name is the database name.
//   - [GolangMigrate] and [GolangMigrateURL]: golang-migrate's driver opened
//     with postgres.WithInstance, and opened from a URL (the migrate command,
//     migrate.New); the lock name is the database name.
//   - [Goose] and [GooseLegacy]: pressly/goose's one fixed key.
//   - [DjangoPGLock]: the Python package django-pglock.
//   - [DjangoPGLocks]: the Python package django-pglocks, a different one.
//   - [Pals]: the Python package pals.
//
// [Lookup] finds any of them by a stable name such as "sqlx" or
// "rails-migrations", for command-line flags and configuration; [Names]
// lists the names.
//
// # Collision odds
//
// Hashed names collide by chance. Among n names hashed into b bits, the odds
// of some collision are about n²/2^(b+1), and reach one half near
// 1.18·2^(b/2) names:
//
//   - 64 bits ([Node], [SHA256Int64], [SQLx], [DjangoPGLock], [Pals]): one in
//     a billion at 190,000 names, even odds at about 5 billion.
//   - 40 bits ([NodeLegacy], whose two integers share 3 digest bytes): even
//     odds at about 1.2 million names.
//   - 32 bits ([RailsMigrations], [GolangMigrate], [GolangMigrateURL],
//     [DjangoPGLocks], [Scoped] within one namespace): even odds at about
//     77,000 names.
//   - 31 bits ([WithAdvisoryLock], per prefix): even odds at about 55,000.
//   - [Goose] and [GooseLegacy] map every name to one key by design.
//   - [ExplicitInt64] and [ExplicitPair] never collide: the name is the key.
//
// Strategies are pure functions of the name: they never touch the network,
// keep no state and are safe for concurrent use. [WithAdvisoryLockFromEnv]
// and [Lookup] read the environment when called, never during package
// initialisation.
package keyspace
