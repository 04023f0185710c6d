package training

import (
	"testing"

	"go.uber.org/goleak"
)

// The kafka-go writer of the test broker keeps its shared transport's
// connection pool alive after Close; those goroutines are not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
	)
}
