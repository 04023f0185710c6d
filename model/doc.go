// Package model is the scoring stage of prefetchd: histories in, scores out.
//
// It sits between features (which keeps each user's history of page indices)
// and prefetch (which turns scores into cache warming and hints). A model
// bundle, written by the training stage or exported from PyTorch, is a folder
// with model.onnx (the sequence form), an optional step.onnx (one click at a
// time with a recurrent state), vocab.txt and manifest.json; CONTRACT.md
// describes it.
//
// ONNX files are decoded with onnx-go into this package's own backend, which
// compiles the graph into a plan of plain-Go kernels (small AVX2/FMA kernels
// for the matrix-vector products and exponentials, gonum BLAS elsewhere and
// on CPUs without them). The supported operators are those PyTorch emits for
// Embedding → GRU/LSTM/RNN → Linear → Softmax, plus the Markov lookup graph
// of the trainer; anything else is refused at load time. Loaded models and
// bundles are immutable and safe for concurrent use.
//
// Callers that need only the hints of a click (the top k pages at or above
// a threshold) use Bundle.StepTopK or Bundle.PredictTopK: on bundles of
// 16,384 pages or more they score only the output rows of the likeliest
// clusters (an approximation, measured against exact scoring; see
// CONTRACT.md), and exactly otherwise.
package model
