// Package training is the offline end of prefetchd: logged clicks in, a
// model bundle out. It reads sessions from the service's own JSONL event
// logs and from research formats (SPMF, MSNBC), builds a vocabulary by
// frequency, trains a popularity baseline, a first-order Markov model and a
// GRU sequence model, evaluates them on held-out sessions, and writes each
// model as a bundle folder (model.onnx, optional step.onnx, vocab.txt,
// manifest.json) that model.LoadBundle runs and the service hot-swaps.
package training
