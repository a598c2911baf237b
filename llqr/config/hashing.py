"""The canonical JSON of a config and its hash: one definition for cell records, checkpoint keys
and digests."""

from __future__ import annotations

import hashlib
import json

from .fields import BOOKKEEPING_KEYS


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def identity_config(config: dict) -> dict:
    """``config`` without the bookkeeping keys: what a checkpoint key hashes."""
    return {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}
