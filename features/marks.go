package features

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// PartitionMark is what the consumer keeps of a partition beside the
// histories, so that a restart can tell a redelivery from offsets that went
// backwards (a topic recreated, a partition truncated, a group reset).
type PartitionMark struct {
	// Gen is the partition's generation: 0 at first, one more each time its
	// offsets were seen going backwards. Clicks carry it (Click.Gen), and a
	// click is a redelivery only within one generation.
	Gen uint32
	// Committed is the highest offset committed in this generation, -1 when
	// none.
	Committed int64
	// MaxTime is the newest record timestamp seen in this generation (Unix
	// ms), 0 when unknown: a record at or below Committed that is newer
	// cannot be a redelivery.
	MaxTime int64
}

// Marks stores partition marks of one consumer group and topic. It must be
// as durable and as shared as the history store: a mark that outlives the
// histories is harmless, histories that outlive their marks would take new
// events for redeliveries.
type Marks interface {
	// LoadMark returns the partition's mark, {0, -1} when none is stored.
	LoadMark(ctx context.Context, partition int) (PartitionMark, error)
	// SaveMarks stores the given marks.
	SaveMarks(ctx context.Context, marks map[int]PartitionMark) error
}

// MemoryMarks is Marks for the in-memory history store: it lives and dies
// with the process, as the histories do.
type MemoryMarks struct {
	mu    sync.Mutex
	marks map[int]PartitionMark // guarded by mu
}

// NewMemoryMarks returns an empty MemoryMarks.
func NewMemoryMarks() *MemoryMarks { return &MemoryMarks{marks: make(map[int]PartitionMark)} }

// LoadMark implements Marks.
func (m *MemoryMarks) LoadMark(_ context.Context, partition int) (PartitionMark, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mk, ok := m.marks[partition]; ok {
		return mk, nil
	}
	return PartitionMark{Committed: -1}, nil
}

// SaveMarks implements Marks.
func (m *MemoryMarks) SaveMarks(_ context.Context, marks map[int]PartitionMark) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p, mk := range marks {
		m.marks[p] = mk
	}
	return nil
}

// RedisMarks is Marks in Redis, beside RedisStore's histories: one hash per
// group and topic (hash-tagged, so one Redis Cluster slot), a field per
// partition holding "gen committed maxtime".
type RedisMarks struct {
	client redis.UniversalClient
	key    string
}

// NewRedisMarks returns marks of group and topic under prefix (for example
// DefaultKeyPrefix, the history store's).
func NewRedisMarks(client redis.UniversalClient, prefix, group, topic string) *RedisMarks {
	return &RedisMarks{client: client, key: prefix + "marks:{" + group + "/" + topic + "}"}
}

// Key is the Redis hash holding the marks.
func (m *RedisMarks) Key() string { return m.key }

// LoadMark implements Marks. Errors from Redis come back wrapped.
func (m *RedisMarks) LoadMark(ctx context.Context, partition int) (PartitionMark, error) {
	v, err := m.client.HGet(ctx, m.key, strconv.Itoa(partition)).Result()
	if err == redis.Nil {
		return PartitionMark{Committed: -1}, nil
	}
	if err != nil {
		return PartitionMark{}, fmt.Errorf("load mark of partition %d: %w", partition, err)
	}
	mk, err := parseMark(v)
	if err != nil {
		// A damaged mark counts as none: events are applied rather than
		// taken for redeliveries.
		return PartitionMark{Committed: -1}, nil
	}
	return mk, nil
}

// SaveMarks implements Marks in one round trip.
func (m *RedisMarks) SaveMarks(ctx context.Context, marks map[int]PartitionMark) error {
	if len(marks) == 0 {
		return nil
	}
	vals := make([]any, 0, 2*len(marks))
	for p, mk := range marks {
		vals = append(vals, strconv.Itoa(p), strconv.FormatUint(uint64(mk.Gen), 10)+" "+strconv.FormatInt(mk.Committed, 10)+" "+strconv.FormatInt(mk.MaxTime, 10))
	}
	if err := m.client.HSet(ctx, m.key, vals...).Err(); err != nil {
		return fmt.Errorf("save %d partition marks: %w", len(marks), err)
	}
	return nil
}

func parseMark(v string) (PartitionMark, error) {
	g, c, ok := strings.Cut(v, " ")
	if !ok {
		return PartitionMark{}, fmt.Errorf("mark %q: no separator", v)
	}
	c, t, _ := strings.Cut(c, " ")
	var maxTime int64
	if t != "" {
		var err error
		if maxTime, err = strconv.ParseInt(t, 10, 64); err != nil {
			return PartitionMark{}, fmt.Errorf("mark %q: %w", v, err)
		}
	}
	gen, err := strconv.ParseUint(g, 10, 32)
	if err != nil {
		return PartitionMark{}, fmt.Errorf("mark %q: %w", v, err)
	}
	com, err := strconv.ParseInt(c, 10, 64)
	if err != nil {
		return PartitionMark{}, fmt.Errorf("mark %q: %w", v, err)
	}
	return PartitionMark{Gen: uint32(gen), Committed: max(com, -1), MaxTime: max(maxTime, 0)}, nil
}
