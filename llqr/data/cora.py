"""Cora (Planetoid: Yang, Cohen & Salakhutdinov 2016) for full-graph node classification, as Kipf &
Welling's GCN and PyTorch Geometric's ``Planetoid("Cora")`` read it, without torch.

The eight ``ind.cora.*`` files (rule fetch_cora) are Python 2 pickles: ``x``, ``tx``, ``allx``
scipy CSR feature matrices, ``y``, ``ty``, ``ally`` one-hot numpy label arrays, ``graph`` a
``collections.defaultdict`` of neighbour lists; ``test.index`` is text, one node id per line. They
are read with ``encoding="latin1"`` by an unpickler that builds only those classes. As PyG does:
features and labels are ``allx``/``ally`` followed by ``tx``/``ty``, with the test rows put at the
node ids ``test.index`` names; the public split is the first ``len(y)`` = 140 nodes (train), the
next 500 (validation) and the 1,000 test ids. Features are row-normalised (PyG's
``NormalizeFeatures``), the adjacency symmetrised and, with self-loops, normalised as GCN uses it:
Â = D^-1/2 (A + I) D^-1/2.

The runner sees one graph as a dataset of one example (``GraphDataset``): its "batch" is the whole
graph, the input row of node i is [Â_i | x_i] (the model splits it at the node count), and the
labels of every node outside the split are ``IGNORE`` so the loss and the metrics count the split's
nodes only (the runner's ignore-index, as translation's padding). ``batch_size`` is 1.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .errors import DataError

CLASSES = 7
VAL_NODES = 500
IGNORE = -1  # the label of nodes outside the split a batch scores
_FIX = "delete it and fetch it again (rule fetch_cora)"
# The rule that writes each Planetoid graph's files (the hint of every error about them).
_RULES = {"cora": "fetch_cora", "synth_graph": "prepare_synth_graph"}
# What the pickles may build: numpy arrays, scipy sparse matrices, the graph's dict, Python 2's
# object reconstruction helpers and the bytes codec of protocol-2 pickles.
_ALLOWED = {("collections", "defaultdict"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "object"),
            ("builtins", "int"), ("builtins", "bytes"), ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"),
            ("_codecs", "encode")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        py3 = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # Python 2 names
        if module.split(".")[0] in ("numpy", "scipy") or (py3, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to build {module}.{name}")


def _rule(name: str) -> str:
    return _RULES.get(name, f"prepare_{name}")


def _fix(name: str) -> str:
    return _FIX if name == "cora" else f"delete it and write it again (rule {_rule(name)})"


def _unpickle(path: Path, fix: str = _FIX):
    try:
        with open(path, "rb") as fh:
            return _Unpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OSError) as exc:
        raise DataError(f"{path} is not a readable Planetoid pickle ({exc}); it is truncated or corrupt: "
                        f"{fix}") from None


def _dense(matrix, path: Path, fix: str = _FIX) -> np.ndarray:
    out = np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix, dtype=np.float32)
    if out.ndim != 2:
        raise DataError(f"{path} holds a {out.ndim}-d array, not a matrix: {fix}")
    return out


def read_raw(directory, name: str = "cora", val_nodes: int = VAL_NODES) -> dict:
    """The eight Planetoid files of graph ``name`` in ``directory``'s raw folder as arrays: features
    (N, F) float32, one-hot labels (N, K), graph {node: neighbours}, the test ids, the number of
    training nodes and ``val_nodes`` (the format does not record the validation size: Cora's is 500)."""
    files = {part: paths.planetoid_file(directory, part, name) for part in paths.CORA_PARTS}
    fix = _fix(name)
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing and name == "cora":
        raise DataError(f"no Cora file {missing[0]} ({len(missing)} of 8 missing): the workflow fetches them "
                        f"(rule fetch_cora); offline, copy the Planetoid files there or set data_sources.cora.local "
                        f"to a folder holding them")
    if missing:
        raise DataError(f"no {name} file {missing[0]} ({len(missing)} of 8 missing): the workflow writes them "
                        f"(rule {_rule(name)})")
    raw = {part: _unpickle(files[part], fix) for part in ("x", "y", "tx", "ty", "allx", "ally", "graph")}
    try:
        test = np.array([int(line) for line in files["test.index"].read_text().split()], dtype=np.int64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{files['test.index']} is not a list of node ids ({exc}): {fix}") from None
    tx = _dense(raw["tx"], files["tx"], fix)
    feats = np.concatenate([_dense(raw["allx"], files["allx"], fix), tx])
    onehot = np.concatenate([_dense(raw["ally"], files["ally"], fix), _dense(raw["ty"], files["ty"], fix)])
    graph, n_train = raw["graph"], len(_dense(raw["y"], files["y"], fix))
    if (len(feats) != len(onehot) or not isinstance(graph, dict) or len(test) != len(tx) or len(test) == 0
            or test.min() < 0 or test.max() >= len(feats) or n_train + val_nodes > len(feats) - len(tx)):
        raise DataError(f"{Path(directory)}: the Planetoid files do not fit together (features {feats.shape}, "
                        f"labels {onehot.shape}, {len(test)} test ids); are they all {name}'s? {fix}")
    return {"features": feats, "onehot": onehot, "graph": graph, "test": test, "train_nodes": n_train,
            "val_nodes": val_nodes}


def normalized_adjacency(graph: dict, n: int) -> np.ndarray:
    """Â = D^-1/2 (A + I) D^-1/2 (dense, float32) of the undirected graph ``graph`` on ``n`` nodes:
    edges both ways, duplicates and self-loops of the file dropped, then one self-loop per node."""
    adj = np.zeros((n, n), np.float32)
    for node, neighbours in graph.items():
        for other in neighbours:
            if 0 <= int(node) < n and 0 <= int(other) < n:
                adj[int(node), int(other)] = adj[int(other), int(node)] = 1.0
    np.fill_diagonal(adj, 1.0)
    scale = 1.0 / np.sqrt(adj.sum(axis=1))
    return adj * scale[:, None] * scale[None, :]


def row_normalized(features: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (an all-zero row stays zero)."""
    sums = features.sum(axis=1, keepdims=True)
    return features / np.where(sums == 0, 1.0, sums)


def prepare(raw: dict) -> dict:
    """The graph as GCN trains on it: inputs [Â | X] (N, N + F), labels (N,) and the public split's
    masks, with the test rows moved to the ids of ``test.index`` as PyG does."""
    feats, onehot, test = raw["features"].copy(), raw["onehot"].copy(), raw["test"]
    order = np.sort(test)
    feats[test], onehot[test] = feats[order], onehot[order]
    n = len(feats)
    labels = np.argmax(onehot, axis=1).astype(np.int32)
    masks = {split: np.zeros(n, bool) for split in ("train", "val", "test")}
    masks["train"][:raw["train_nodes"]] = True
    masks["val"][raw["train_nodes"]:raw["train_nodes"] + raw.get("val_nodes", VAL_NODES)] = True
    masks["test"][test] = True
    inputs = np.concatenate([normalized_adjacency(raw["graph"], n), row_normalized(feats)], axis=1)
    return {"inputs": inputs.astype(np.float32), "labels": labels, "masks": masks,
            "num_classes": int(onehot.shape[1])}


@dataclass(frozen=True)
class GraphDataset:
    """One graph as a dataset of one example (see the module docstring); the runner's interface."""

    name: str
    path: str
    inputs: np.ndarray  # (N, N + F): [Â | X]
    labels: np.ndarray  # (N,) int32
    masks: dict  # split -> (N,) bool
    num_classes: int
    pad_id: int = IGNORE

    train_size = 1  # the stream draws the one graph every step (batch_size 1)

    def split_labels(self, split: str) -> np.ndarray:
        """The labels with every node outside ``split`` set to IGNORE."""
        return np.where(self.masks[split], self.labels, IGNORE).astype(np.int32)

    @property
    def test_size(self) -> int:
        """Scored test nodes (the runner's denominator for accuracy and loss)."""
        return int(self.masks["test"].sum())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape)

    def train_batch(self, indices: np.ndarray, batch_number: int) -> tuple[np.ndarray, np.ndarray]:
        rows = len(np.asarray(indices).reshape(-1))
        return (np.broadcast_to(self.inputs, (rows, *self.inputs.shape)),
                np.broadcast_to(self.split_labels("train"), (rows, len(self.labels))))

    def eval_batches(self, batch_size: int):
        """The whole graph once, scored on the test nodes."""
        yield self.inputs[None], self.split_labels("test")[None]

    def attach_stream(self, stream, depth: int | None = None) -> None:
        """In-memory data needs no prefetching."""

    def close(self) -> None:
        pass


def load(directory, name: str = "cora", val_nodes: int = VAL_NODES) -> GraphDataset:
    """The Planetoid graph ``name`` in ``directory`` (Cora's, or the generated synth_graph's)."""
    prepared = prepare(read_raw(directory, name, val_nodes))
    return GraphDataset(name=name, path=str(paths.raw_file(directory, "")), inputs=prepared["inputs"],
                        labels=prepared["labels"], masks=prepared["masks"], num_classes=prepared["num_classes"])
