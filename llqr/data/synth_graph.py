"""A small Cora-like graph for the SINGD study's GCN at demo scale (ours): generated, no download.

A seeded stochastic block model: 7 classes (as Cora) of 42 nodes, 294 nodes in all; an edge joins
two nodes of one class with probability P_IN and of two classes with P_OUT (mean degree ~4 and
~80% of the edges within a class, near Cora's 3.9 and 81%). Each node has a sparse bag of WORDS
binary words: every word is on with probability P_NOISE, and the node's class's own WORDS_PER_CLASS
words also with P_TOPIC, so features are correlated with the class without giving it away.

The split follows Cora's public one scaled down: the first 140 nodes are the training nodes (20 per
class, as Planetoid), the next VAL_NODES (10 per class) the validation nodes, the last TEST_NODES
(12 per class) the test nodes. ``prepare`` writes the eight Planetoid files (rule
prepare_synth_graph) exactly as Cora's are laid out, so ``llqr.data.cora`` reads and normalises
both with the same code.
"""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np

from . import paths

NAME = "synth_graph"
SEED = 0
CLASSES = 7
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 20, 10, 12
TRAIN_NODES, VAL_NODES, TEST_NODES = (CLASSES * k for k in (TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS))
NODES = TRAIN_NODES + VAL_NODES + TEST_NODES
P_IN, P_OUT = 0.08, 0.003
WORDS, WORDS_PER_CLASS = 140, 12
P_TOPIC, P_NOISE = 0.15, 0.04


def generate(seed: int = SEED) -> dict:
    """The graph of ``seed``: features (N, WORDS) float32 in node order, labels (N,), the neighbour
    lists, and the test ids (a permutation of the last TEST_NODES ids, as Cora's test.index)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.permutation(np.repeat(np.arange(CLASSES), k))
                             for k in (TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS)])
    same = labels[:, None] == labels[None, :]
    upper = np.triu(rng.random((NODES, NODES)) < np.where(same, P_IN, P_OUT), k=1)
    graph = defaultdict(list)
    for a, b in zip(*np.nonzero(upper)):
        graph[int(a)].append(int(b))
        graph[int(b)].append(int(a))
    topic = np.arange(WORDS)[None, :] // WORDS_PER_CLASS == labels[:, None]
    on = rng.random((NODES, WORDS)) < np.where(topic, P_TOPIC + P_NOISE, P_NOISE)
    test = rng.permutation(np.arange(NODES - TEST_NODES, NODES))
    return {"features": on.astype(np.float32), "labels": labels.astype(np.int64), "graph": graph, "test": test}


def write(directory, graph: dict) -> None:
    """``graph`` (``generate``'s) as the eight Planetoid files of ``directory`` (pickle protocol 2;
    features scipy CSR, labels one-hot; tx/ty rows in test.index order)."""
    from scipy import sparse

    feats, onehot = graph["features"], np.eye(CLASSES, dtype=np.float32)[graph["labels"]]
    known, test = NODES - TEST_NODES, graph["test"]
    parts = {"x": sparse.csr_matrix(feats[:TRAIN_NODES]), "y": onehot[:TRAIN_NODES],
             "allx": sparse.csr_matrix(feats[:known]), "ally": onehot[:known],
             "tx": sparse.csr_matrix(feats[test]), "ty": onehot[test], "graph": graph["graph"]}
    for part, obj in parts.items():
        path = paths.synth_graph_file(directory, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(obj, protocol=2))
    paths.synth_graph_file(directory, "test.index").write_text("".join(f"{i}\n" for i in test))


def prepare(directory, seed: int = SEED) -> dict:
    """Generate the graph and write its files (rule prepare_synth_graph); returns its counts."""
    graph = generate(seed)
    write(directory, graph)
    edges = sum(len(v) for v in graph["graph"].values()) // 2
    within = sum(graph["labels"][a] == graph["labels"][b] for a, nbrs in graph["graph"].items() for b in nbrs) / 2
    return {"nodes": NODES, "edges": edges, "within_class_edges": int(within), "train": TRAIN_NODES,
            "val": VAL_NODES, "test": TEST_NODES, "classes": CLASSES, "words": WORDS, "seed": seed}


def load(directory):
    """The written graph through Cora's loader (its normalisation and split masks)."""
    from . import cora

    return cora.load(directory, name=NAME, val_nodes=VAL_NODES)
