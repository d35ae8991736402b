// Package examples holds runnable examples of go-advisory-lock with the
// ORMs, migration tools and metrics libraries it is used with: gorm, sqlx,
// bun, goose and Prometheus. It is a module of its own so that the library's
// go.mod never depends on them.
//
// Every example runs in "go test" against a live PostgreSQL server, found the
// way the library's tests find it: PG_CONNECTION_STRING if set, else the
// server at 127.0.0.1:5432 (user postgres). docs/recipes.md shows their bodies,
// and a test keeps the two identical.
package examples
