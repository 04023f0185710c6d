// Package aliastest tells tests whether a string shares memory with
// another: a cache entry that holds a slice of a decoded message keeps the
// whole message alive.
package aliastest

import "unsafe"

// Within reports whether s points into buf's bytes.
func Within(s, buf string) bool {
	if len(s) == 0 || len(buf) == 0 {
		return false
	}
	p, b := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(buf)))
	return p >= b && p < b+uintptr(len(buf))
}
