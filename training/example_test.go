package training_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/prefetchd/prefetchd/training"
)

// Sessions in SPMF form become a vocabulary, a Markov model and a bundle
// folder the service can load.
func Example() {
	sessions, err := training.ReadSPMF(strings.NewReader("1 -1 2 -1 3 -1 -2\n2 -1 3 -1 -2\n1 -1 2 -1 -2\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	vocab, err := training.BuildVocab(sessions, training.VocabConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	seqs := training.Encode(vocab, sessions)
	markov, err := training.TrainMarkov(seqs, vocab.Len(), training.MarkovConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	after := markov.Predict([]int64{vocab.Index("/page/1")}, nil)
	fmt.Printf("P(/page/2 | /page/1) = %.3f\n", after[vocab.Index("/page/2")])

	bundle, err := training.MarkovBundle(markov, vocab, training.ManifestConfig{Name: "example", Version: "1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	dir, err := os.MkdirTemp("", "bundle")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	if err := training.WriteBundle(filepath.Join(dir, "example"), bundle); err != nil {
		fmt.Println(err)
		return
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "example"))
	for _, e := range entries {
		fmt.Println(e.Name())
	}
	// Output:
	// P(/page/2 | /page/1) = 0.985
	// manifest.json
	// model.onnx
	// vocab.txt
}
