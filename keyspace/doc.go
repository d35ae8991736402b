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
//   - [Func] adapts any function, for schemes of your own.
//
// Explicit keys need no strategy: build them with [Int64] or [Pair].
//
// # Collision odds
//
// Hashed names collide by chance. With a 64-bit key (Default, NodeLegacy,
// SHA256Int64) the odds of any collision among n names are about
// n²/2⁶⁵: one in a billion at 190,000 names. Schemes that keep only 32 bits
// reach even odds at about 77,000 names.
//
// Strategies are pure functions of the name: they never touch the network,
// keep no state and are safe for concurrent use.
package keyspace
