package drv

import "reflect"

// StartupPID returns the backend pid that driver connection dc got from
// the server at startup (BackendKeyData): pgx's pgconn.PgConn.PID, lib/pq's
// field pid, bun's pgdriver's processID, looking through wrappers as
// SessionOwner does. A pooler between client and server sends a key of its
// own, so a session whose pg_backend_pid() differs is not the
// connection's own (see session.Manager's transaction-held sessions).
func StartupPID(dc any) (int64, bool) {
	if pid := Call0(Call0(reflect.ValueOf(SessionOwner(dc)), "PgConn"), "PID"); pid.IsValid() && pid.CanUint() {
		return int64(pid.Uint()), true
	}
	v := reflect.ValueOf(dc)
	for range MaxUnwrap {
		s := v
		for s.Kind() == reflect.Pointer || s.Kind() == reflect.Interface {
			if s.IsNil() {
				return 0, false
			}
			s = s.Elem()
		}
		if s.Kind() == reflect.Struct {
			for _, name := range []string{"pid", "processID"} {
				if f := s.FieldByName(name); f.IsValid() && f.CanInt() {
					return f.Int(), true
				}
			}
		}
		if v = unwrapped(v); !v.IsValid() {
			break
		}
	}
	return 0, false
}
