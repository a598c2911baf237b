"""Rule params that reach a job without making its outputs stale.

Snakemake 9 (``snakemake/persistence/__init__.py``: ``_params`` and ``_serialize_param_builtin``)
records and compares only params whose values are builtin types (str, int, list, dict, ...); a
value of any other type is UNREPRESENTABLE and left out of the ``params`` rerun trigger. A
``JobParams`` instance therefore hands the storage folders and the bookkeeping keys to the job
without being part of its identity: moving ``checkpoints_dir`` to scratch, respelling ``data_dir``
or changing ``checkpoint_freq`` stales and deletes nothing. It pickles as a plain dict, so the
job's script preamble can unpickle it before ``llqr`` is importable (a conda job gets ``llqr`` from
the checkout only after that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def normalise_dir(path) -> str:
    """One spelling per folder: relative to the working directory when inside it, else absolute
    (``./data``, ``data/`` and ``$PWD/data`` are all ``data``), so declared paths do not change."""
    full = os.path.abspath(os.path.expanduser(str(path)))
    rel = os.path.relpath(full)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "")


def config_flag(value, key: str) -> bool:
    """A yes/no config value: a bool, or a string/number as ``--config key=true`` passes it."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"config '{key}': expected true or false, got {value!r}")


@dataclass(frozen=True)
class JobParams:
    results_dir: str
    checkpoints_dir: str
    data_dir: str
    settings: tuple = ()  # (key, value) pairs of the cell's bookkeeping keys (matrix.BOOKKEEPING_KEYS)

    @classmethod
    def of(cls, results_dir, checkpoints_dir, data_dir, settings=None) -> JobParams:
        return cls(normalise_dir(results_dir), normalise_dir(checkpoints_dir), normalise_dir(data_dir),
                   tuple(sorted((settings or {}).items())))

    def as_dict(self) -> dict:
        return {"results_dir": self.results_dir, "checkpoints_dir": self.checkpoints_dir,
                "data_dir": self.data_dir, "settings": dict(self.settings)}

    def __reduce__(self):
        return dict, (self.as_dict(),)
