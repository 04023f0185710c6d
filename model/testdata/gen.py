#!/usr/bin/env python3
"""Writes the extra fixture models of model/testdata with PyTorch's exporter.

Each folder gets model.onnx (sequence form), step.onnx when the model has a
step form, vocab.txt and reference.json (PyTorch's own outputs), in the
format of the GRU fixtures: Embedding(padding_idx=0) -> recurrent layers
(batch_first) -> Linear on the last position -> optional Softmax.

Run from model/testdata with Debian's python3-torch and python3-onnx:
    python3 gen.py
"""
import json
import os

import torch
from torch import nn

torch.manual_seed(7)


class Seq(nn.Module):
    def __init__(self, cell, vocab, emb, hidden, layers, probs, nonlinearity="tanh", bidirectional=False):
        super().__init__()
        self.cell, self.probs, self.layers, self.hidden = cell, probs, layers, hidden
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        kw = dict(num_layers=layers, batch_first=True, bidirectional=bidirectional)
        if cell == "gru":
            self.rnn = nn.GRU(emb, hidden, **kw)
        elif cell == "lstm":
            self.rnn = nn.LSTM(emb, hidden, **kw)
        else:
            self.rnn = nn.RNN(emb, hidden, nonlinearity=nonlinearity, **kw)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), vocab)

    def forward(self, page_ids):
        y, _ = self.rnn(self.emb(page_ids))
        s = self.out(y[:, -1, :])
        return torch.softmax(s, dim=-1) if self.probs else s


class Variant(nn.Module):
    """Other common export shapes: the last hidden state h_n[-1] instead of
    the last output, a ReLU between encoder and head, a Linear without bias
    (MatMul) and a log-softmax head (log-probabilities count as logits)."""

    def __init__(self, vocab, emb, hidden, layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = nn.GRU(emb, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab, bias=False)

    def forward(self, page_ids):
        _, h = self.rnn(self.emb(page_ids))
        return torch.log_softmax(self.out(torch.relu(h[-1])), dim=1)


def export_variant(folder, opset, vocab, emb, hidden, layers):
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(sum(folder.encode()))
    m = Variant(vocab, emb, hidden, layers).eval()
    torch.onnx.export(m, (torch.zeros(2, 5, dtype=torch.long),), os.path.join(folder, "model.onnx"),
                      opset_version=opset, input_names=["page_ids"], output_names=["logits"],
                      dynamic_axes={"page_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})
    ref = {"exporter": "torch " + torch.__version__, "opset": opset, "cell": "gru", "layers": layers,
           "vocab": vocab, "embedding": emb, "hidden": hidden, "output": "logits", "input": "page_ids", "cases": []}
    with torch.no_grad():
        for ids in cases(vocab, g):
            ref["cases"].append({"page_ids": ids.tolist(), "output": m(ids).tolist()})
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("<pad>\n<unk>\n")
        for i in range(2, vocab):
            f.write("/page/%d\n" % i)


class Step(nn.Module):
    """One click: page_id [batch, 1] + state_in -> scores + state_out.

    For LSTM the state is h and c stacked: [2*layers, batch, hidden].
    """

    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, page_id, state_in):
        x = self.seq.emb(page_id)
        if self.seq.cell == "lstm":
            n = self.seq.layers
            y, (h, c) = self.seq.rnn(x, (state_in[:n], state_in[n:]))
            state_out = torch.cat([h, c], dim=0)
        else:
            y, state_out = self.seq.rnn(x, state_in)
        s = self.seq.out(y[:, -1, :])
        if self.seq.probs:
            s = torch.softmax(s, dim=-1)
        return s, state_out


class StepBatchMajor(Step):
    """A step form outside the contract: state_out batch first,
    [batch, layers, hidden], while state_in is [layers, batch, hidden]."""

    def forward(self, page_id, state_in):
        s, state_out = Step.forward(self, page_id, state_in)
        return s, state_out.transpose(0, 1)


def export_bad_state(folder, opset, vocab, emb, hidden, layers):
    """A 2-layer GRU whose step form returns its state batch first: one
    user at a time it agrees with the sequence form, several at once not."""
    os.makedirs(folder, exist_ok=True)
    m = Seq("gru", vocab, emb, hidden, layers, True).eval()
    torch.onnx.export(m, (torch.zeros(2, 5, dtype=torch.long),), os.path.join(folder, "model.onnx"),
                      opset_version=opset, input_names=["page_ids"], output_names=["probs"],
                      dynamic_axes={"page_ids": {0: "batch", 1: "seq"}, "probs": {0: "batch"}})
    torch.onnx.export(StepBatchMajor(m).eval(), (torch.zeros(1, 1, dtype=torch.long), torch.zeros(layers, 1, hidden)),
                      os.path.join(folder, "step.onnx"), opset_version=opset,
                      input_names=["page_id", "state_in"], output_names=["probs", "state_out"],
                      dynamic_axes={"page_id": {0: "batch"}, "state_in": {1: "batch"},
                                    "probs": {0: "batch"}, "state_out": {0: "batch"}})
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("<pad>\n<unk>\n")
        for i in range(2, vocab):
            f.write("/page/%d\n" % i)


def cases(vocab, g):
    out = []
    for batch, seq in [(1, 1), (1, 6), (3, 9), (2, 20)]:
        ids = torch.randint(2, vocab, (batch, seq), generator=g)
        if seq > 4:
            ids[0, :3] = 0  # left padding
        if batch > 1 and seq > 2:
            ids[1, -1] = 1  # unknown page
        out.append(ids)
    return out


def export(folder, cell, opset, vocab, emb, hidden, layers, probs, step, **kw):
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(sum(folder.encode()))
    m = Seq(cell, vocab, emb, hidden, layers, probs, **kw).eval()
    name = "probs" if probs else "logits"
    ex = torch.zeros(2, 5, dtype=torch.long)
    torch.onnx.export(m, (ex,), os.path.join(folder, "model.onnx"), opset_version=opset,
                      input_names=["page_ids"], output_names=[name],
                      dynamic_axes={"page_ids": {0: "batch", 1: "seq"}, name: {0: "batch"}})
    ref = {"exporter": "torch " + torch.__version__, "opset": opset, "cell": cell, "layers": layers,
           "vocab": vocab, "embedding": emb, "hidden": hidden, "output": name, "input": "page_ids", "cases": []}
    with torch.no_grad():
        for ids in cases(vocab, g):
            ref["cases"].append({"page_ids": ids.tolist(), "output": m(ids).tolist()})
        if step:
            sm = Step(m).eval()
            rows = layers * (2 if cell == "lstm" else 1)
            state = torch.zeros(rows, 1, hidden)
            torch.onnx.export(sm, (torch.zeros(1, 1, dtype=torch.long), state), os.path.join(folder, "step.onnx"),
                              opset_version=opset, input_names=["page_id", "state_in"],
                              output_names=[name, "state_out"],
                              dynamic_axes={"page_id": {0: "batch"}, "state_in": {1: "batch"},
                                            name: {0: "batch"}, "state_out": {1: "batch"}})
            session = torch.tensor([[0, 5, 9, 2, 1, 17, 3]])
            for t in range(session.shape[1]):
                s, state = sm(session[:, t:t + 1], state)
            ref["step_check"] = {"page_ids": session.tolist(), "output": s.tolist(), "state": state.tolist()}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("<pad>\n<unk>\n")
        for i in range(2, vocab):
            f.write("/page/%d\n" % i)


if __name__ == "__main__":
    export("lstm-probs-opset11", "lstm", 11, 120, 12, 24, 1, True, True)
    export("lstm2-logits-opset17", "lstm", 17, 150, 16, 20, 2, False, True)
    export("rnn-probs-opset17", "rnn", 17, 100, 8, 16, 1, True, True)
    export("rnn2relu-logits-opset11", "rnn", 11, 90, 8, 12, 2, False, False, nonlinearity="relu")
    export("gru2-probs-opset11", "gru", 11, 130, 10, 18, 2, True, True)
    export("gru-bidir-logits-opset15", "gru", 15, 80, 8, 10, 1, False, False, bidirectional=True)
    export("lstm3-probs-opset14", "lstm", 14, 60, 6, 10, 3, True, True)
    export("gru-v1000-logits-opset16", "gru", 16, 1000, 8, 8, 1, False, False)
    export_variant("gru2-hn-logsoftmax-opset12", 12, 70, 6, 9, 2)
    export_bad_state("bad-gru2-state-batch-major", 13, 40, 6, 8, 2)
