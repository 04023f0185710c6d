// Package broker runs an in-process Kafka-protocol broker (franz-go's kfake)
// on loopback. The embedded default of prefetchd, cmd/devbroker and the Kafka
// tests all use it, so that kafka-go is exercised against a real protocol peer
// without installing Kafka.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Config describes an in-process broker.
type Config struct {
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Topics are created at start with Partitions partitions each.
	Topics []string
	// Partitions per seeded or auto-created topic. Default 4.
	Partitions int
	// MinSessionTimeout is the smallest consumer-group session timeout the
	// broker accepts. Default 6 s, as Kafka; kafka-go retries forever when its
	// own timeout is below it.
	MinSessionTimeout time.Duration
	// SCRAMUser and SCRAMPassword, when set, require SASL SCRAM-SHA-256
	// authentication with this user.
	SCRAMUser     string
	SCRAMPassword string
	// TLS, when set, makes the broker accept TLS connections only, with
	// this server configuration.
	TLS *tls.Config
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("broker port %d outside 0..65535", c.Port)
	}
	if c.Partitions < 0 || c.Partitions > 1024 {
		return fmt.Errorf("broker partitions %d outside 0..1024", c.Partitions)
	}
	for _, t := range c.Topics {
		if t == "" {
			return errors.New("broker topic name is empty")
		}
	}
	return nil
}

// Broker is a running in-process broker.
type Broker struct {
	cluster *kfake.Cluster
}

// Start starts a broker listening on 127.0.0.1. Close stops it.
func Start(cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	parts := cfg.Partitions
	if parts == 0 {
		parts = 4
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(cfg.Port),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(parts),
	}
	if cfg.MinSessionTimeout > 0 {
		opts = append(opts, kfake.GroupMinSessionTimeout(cfg.MinSessionTimeout))
	}
	if cfg.SCRAMUser != "" {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", cfg.SCRAMUser, cfg.SCRAMPassword))
	}
	if cfg.TLS != nil {
		opts = append(opts, kfake.TLS(cfg.TLS))
	}
	if len(cfg.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(parts), cfg.Topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start kafka broker: %w", err)
	}
	return &Broker{cluster: c}, nil
}

// Addr is the broker's host:port.
func (b *Broker) Addr() string { return b.cluster.ListenAddrs()[0] }

// Close stops the broker; its data is lost.
func (b *Broker) Close() { b.cluster.Close() }
