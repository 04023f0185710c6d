package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/features"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// envConfig describes the processes of one scenario.
type envConfig struct {
	// history is the --history-store of the service: features.BackendRedis
	// (shared, checked record by record) or features.BackendMemory.
	history string
	// persist runs redis-server with an append-only file fsynced on every
	// write, so that a kill -9 loses nothing acknowledged; without it a
	// restart comes back empty.
	persist bool
	// replicas is the number of prefetchd processes in the consumer group.
	replicas int
	// cluster replaces the single redis-server with a 3-master Redis
	// Cluster (always persistent); seedOnly gives the service one of its
	// addresses instead of all three.
	cluster, seedOnly bool
	load              load
}

// service is one prefetchd process.
type service struct {
	*proc
	grpc, admin string
	conn        *grpc.ClientConn
	hints       prefetchv1.HintServiceClient
}

// env is the world of one scenario: a broker, Redis, the service, a plan
// of clicks and its producer, and the checker's own clients.
type env struct {
	t          *testing.T
	cfg        envConfig
	voc        vocabulary
	plan       *plan
	prod       *producer
	broker     *proc
	brokerAddr string
	redis      []*proc
	redisAddrs []string
	svcs       []*service
	rdb        redis.UniversalClient
	store      *features.RedisStore
}

// newEnv starts every process of cfg and waits until each is ready.
func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	e := &env{t: t, cfg: cfg, voc: loadVocabulary(t)}
	e.plan = newPlan(t, e.voc, cfg.load, uint64(len(t.Name())))
	e.startBroker()
	if cfg.cluster {
		e.startCluster()
	} else {
		e.startRedis()
	}
	e.rdb = newRedisClient(e.redisAddrs, cfg.cluster)
	t.Cleanup(func() { _ = e.rdb.Close() })
	store, err := features.NewRedisStore(features.StoreConfig{
		Backend: features.BackendRedis, History: features.HistoryConfig{MaxLen: e.voc.maxLen}, CacheSize: -1,
	}, e.rdb, nil)
	if err != nil {
		t.Fatalf("checker history store: %v", err)
	}
	e.store = store
	for range max(cfg.replicas, 1) {
		e.startService()
	}
	e.prod = newProducer(e.plan, e.brokerAddr)
	return e
}

func (e *env) startBroker() {
	e.t.Helper()
	port := freePorts(e.t, 1)[0]
	e.brokerAddr = loopback(port)
	e.broker = newProc(e.t, "devbroker", filepath.Join(binDir, "devbroker"),
		[]string{"--port", strconv.Itoa(port), "--topic", topic, "--partitions", strconv.Itoa(partitions)},
		func(ctx context.Context) error {
			conn, err := (&kafka.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", e.brokerAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			parts, err := conn.ReadPartitions(topic)
			if err == nil && len(parts) != partitions {
				err = fmt.Errorf("topic %s has %d partitions: %w", topic, len(parts), errNotReady)
			}
			return err
		})
	e.broker.start()
}

// redisArgs are the arguments of a redis-server on port with its files in dir.
func redisArgs(port int, dir string, persist bool) []string {
	args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
		"--dir", dir, "--daemonize", "no", "--save", ""}
	if persist {
		return append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	return append(args, "--appendonly", "no")
}

// pingProbe is a readiness probe that PINGs the Redis at addr.
func pingProbe(t testing.TB, addr string) func(context.Context) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1,
		ReadTimeout: time.Second, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return func(ctx context.Context) error { return c.Ping(ctx).Err() }
}

func (e *env) startRedis() {
	e.t.Helper()
	port := freePorts(e.t, 1)[0]
	addr := loopback(port)
	p := newProc(e.t, "redis", redisServer(e.t), redisArgs(port, e.t.TempDir(), e.cfg.persist), pingProbe(e.t, addr))
	p.start()
	e.redis, e.redisAddrs = []*proc{p}, []string{addr}
}

// startCluster starts three persistent cluster-enabled masters, gives each
// a third of the slots, joins them and waits until the cluster is ok.
func (e *env) startCluster() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var (
		clients []*redis.Client
		buses   []int
	)
	for i := range 3 {
		ports := freePorts(e.t, 2)
		port, bus := ports[0], ports[1]
		addr := loopback(port)
		args := append(redisArgs(port, e.t.TempDir(), true), "--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(bus), "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "yes")
		p := newProc(e.t, "redis-"+strconv.Itoa(i), redisServer(e.t), args, pingProbe(e.t, addr))
		p.start()
		c := redis.NewClient(&redis.Options{Addr: addr})
		e.t.Cleanup(func() { _ = c.Close() })
		e.redis, e.redisAddrs = append(e.redis, p), append(e.redisAddrs, addr)
		clients, buses = append(clients, c), append(buses, bus)
	}
	for i, c := range clients {
		lo, hi := i*16384/3, (i+1)*16384/3-1
		if err := c.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			e.t.Fatalf("cluster addslotsrange %d-%d on %s: %v", lo, hi, e.redisAddrs[i], err)
		}
		if i > 0 {
			host, port, _ := net.SplitHostPort(e.redisAddrs[i])
			if err := clients[0].Do(ctx, "CLUSTER", "MEET", host, port, buses[i]).Err(); err != nil {
				e.t.Fatalf("cluster meet %s: %v", e.redisAddrs[i], err)
			}
		}
	}
	for _, c := range clients {
		if err := clusterOK(ctx, c); err != nil {
			e.t.Fatalf("redis cluster: %v", err)
		}
	}
}

// clusterOK waits until c sees a healthy 3-node cluster or ctx ends.
func clusterOK(ctx context.Context, c *redis.Client) error {
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ok: %v %q", c.Options().Addr, err, info)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serviceRedisAddr is the --redis-addr the service is given.
func (e *env) serviceRedisAddr() string {
	if e.cfg.seedOnly {
		return e.redisAddrs[0]
	}
	return strings.Join(e.redisAddrs, ",")
}

// startService starts one more prefetchd replica in the group.
func (e *env) startService() *service {
	e.t.Helper()
	ports := freePorts(e.t, 2)
	s := &service{grpc: loopback(ports[0]), admin: loopback(ports[1])}
	args := []string{
		"--kafka-brokers", e.brokerAddr, "--topic", topic, "--group", group,
		"--redis-addr", e.serviceRedisAddr(), "--history-store", e.cfg.history,
		"--listen", s.grpc, "--admin-listen", s.admin,
		"--threshold", "0", "--k", strconv.Itoa(hintsPerClick), "--replay", "none", "--log-level", "info",
	}
	s.proc = newProc(e.t, "prefetchd-"+strconv.Itoa(len(e.svcs)), filepath.Join(binDir, "prefetchd"), args,
		func(ctx context.Context) error {
			code, body, err := httpGet(ctx, "http://"+s.admin+"/readyz")
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("readyz %d %s: %w", code, strings.TrimSpace(body), errNotReady)
			}
			return err
		})
	s.start()
	conn, err := grpc.NewClient(s.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatalf("grpc client for %s: %v", s.grpc, err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	s.conn, s.hints = conn, prefetchv1.NewHintServiceClient(conn)
	e.svcs = append(e.svcs, s)
	return s
}

// procs are the services' processes, running or not.
func (e *env) procs() []*proc {
	out := make([]*proc, len(e.svcs))
	for i, s := range e.svcs {
		out[i] = s.proc
	}
	return out
}

// live are the services whose process runs now.
func (e *env) live() []*service {
	var out []*service
	for _, s := range e.svcs {
		if s.running() {
			out = append(out, s)
		}
	}
	return out
}

// outage kills p (SIGKILL), waits d and starts it again on the same port
// and files.
func (e *env) outage(p *proc, d time.Duration) {
	e.t.Helper()
	e.t.Logf("fault: kill -9 %s for %v at event %d", p.name, d, e.prod.acked.Load())
	p.kill()
	time.Sleep(d)
	p.start()
	e.t.Logf("fault: %s back at event %d", p.name, e.prod.acked.Load())
}

// freeze stops p with SIGSTOP for d, then resumes it with SIGCONT.
func (e *env) freeze(p *proc, d time.Duration) {
	e.t.Helper()
	e.t.Logf("fault: SIGSTOP %s for %v at event %d", p.name, d, e.prod.acked.Load())
	p.signal(syscall.SIGSTOP)
	time.Sleep(d)
	p.signal(syscall.SIGCONT)
	e.t.Logf("fault: SIGCONT %s at event %d", p.name, e.prod.acked.Load())
}

// expectUnready fails the test unless some live service's /readyz answers
// non-200 within d (a dependency is down and the service must say so).
func (e *env) expectUnready(d time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		for _, s := range e.live() {
			if code, _, err := httpGet(ctx, "http://"+s.admin+"/readyz"); err == nil && code != http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
			e.t.Errorf("no service reported unready on /readyz within %v of the outage", d)
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rewindGroup commits offset 0 for every partition on behalf of the
// (empty) group, as an operator resetting the group's offsets would.
func (e *env) rewindGroup() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(e.brokerAddr), Timeout: 3 * time.Second, Transport: tr}
	commits := make([]kafka.OffsetCommit, partitions)
	for i := range partitions {
		commits[i] = kafka.OffsetCommit{Partition: i, Offset: 0}
	}
	resp, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: commits}})
	if err != nil {
		e.t.Fatalf("reset the group's offsets: %v", err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			e.t.Fatalf("reset the group's offset of partition %d: %v", p.Partition, p.Error)
		}
	}
	e.t.Log("fault: the group's offsets reset to 0 (every event will be delivered again)")
}

// committedLag is the sum over partitions of the high-water mark minus the
// group's committed offset (a partition without a commit counts whole).
func (e *env) committedLag(ctx context.Context) (int64, error) {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(e.brokerAddr), Timeout: 3 * time.Second, Transport: tr}
	ids := make([]int, partitions)
	reqs := make([]kafka.OffsetRequest, partitions)
	for i := range partitions {
		ids[i], reqs[i] = i, kafka.LastOffsetOf(i)
	}
	lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, fmt.Errorf("list offsets: %w", err)
	}
	of, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		return 0, fmt.Errorf("offset fetch: %w", err)
	}
	if of.Error != nil {
		return 0, fmt.Errorf("offset fetch: %w", of.Error)
	}
	committed := map[int]int64{}
	for _, p := range of.Topics[topic] {
		if p.Error == nil && p.CommittedOffset >= 0 {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	var lag int64
	for _, p := range lo.Topics[topic] {
		if p.Error != nil {
			return 0, fmt.Errorf("list offsets of partition %d: %w", p.Partition, p.Error)
		}
		lag += p.LastOffset - committed[p.Partition]
	}
	return lag, nil
}

var errNoRedisServer = errors.New("redis-server is not on PATH (apt-get install -y redis-server); the suite needs it")

// redisServer is the path of redis-server; the test fails without it.
func redisServer(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("%v: %v", errNoRedisServer, err)
	}
	return p
}
