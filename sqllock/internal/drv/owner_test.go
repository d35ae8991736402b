package drv

import "testing"

// Only a pointer to a value of nonzero size identifies a driver connection.
func TestConnPointer(t *testing.T) {
	type empty struct{}
	for _, dc := range []any{nil, 7, "conn", (*int)(nil), &empty{}} {
		if p := ConnPointer(dc); p != nil {
			t.Errorf("connPointer(%T) = %p, want nil", dc, p)
		}
	}
	x := new(int64)
	if p := ConnPointer(x); p == nil {
		t.Error("connPointer(*int64) = nil")
	}
}
