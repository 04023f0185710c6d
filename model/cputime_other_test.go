//go:build !unix

package model

func cpuTime() int64 { return 0 }
