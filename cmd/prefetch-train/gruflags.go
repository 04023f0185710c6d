package main

import (
	"flag"

	"github.com/prefetchd/prefetchd/training"
)

type gruFlagSet struct{}

func registerGRUFlags(*flag.FlagSet) *gruFlagSet { return &gruFlagSet{} }

func (g *gruFlagSet) config(uint64) training.GRUConfig { return training.GRUConfig{} }
