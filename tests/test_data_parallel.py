"""data_parallel=true: batches sharded over 2 (forced) CPU devices give the 1-device run's numbers."""

import json
import os
import subprocess
import sys

import pytest

from llqr.config import ConfigError, resolve
from llqr.train.parallel import Placement

SCRIPT = r"""
import json, sys
import jax
import numpy as np
from llqr.config import resolve
from llqr.train.loop import run

root, data_root = sys.argv[1], sys.argv[2]
assert jax.local_device_count() == 2, jax.local_devices()
result = {}
for dp in (False, True):
    cfg = resolve("digits-mlp-smoke", {"data_parallel": dp, "use_preconditioner": True, "divergence": "ngd",
                                       "update_preconditioner_every": 8, "precond_batch_size": 64, "max_steps": 24})
    lines = []
    summary = run(cfg, cell_id=f"dp/{dp}/seed42", results_dir=root, checkpoints_dir=root + "/ck",
                  data_root=data_root, out=lines.append)
    evals = [json.loads(l) for l in open(f"{root}/cells/dp/{dp}/seed42/metrics.jsonl")]
    result[str(dp)] = {"final": summary["final_metrics"], "log": lines,
                       "losses": [e["train_loss"] for e in evals if e["event"] == "train"],
                       "lqr": [e["lqr_cost_last"] for e in evals if e["event"] == "precond"]}
print("RESULT" + json.dumps(result))
"""


def test_two_device_run_matches_the_one_device_run(tmp_path, digits_root):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(digits_root)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    one, two = result["False"], result["True"]
    assert any("data parallel over 2 devices" in line for line in two["log"])
    assert not any("data parallel" in line for line in one["log"])
    for key in ("test_accuracy", "test_loss"):
        assert two["final"][key] == pytest.approx(one["final"][key], rel=1e-4, abs=1e-5), key
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4) and len(one["losses"]) > 3
    assert two["lqr"] == pytest.approx(one["lqr"], rel=1e-3) and len(one["lqr"]) == 3  # the sharded P fits


def test_uneven_batches_and_unsupported_runs_are_refused():
    import jax

    place = Placement(True, devices=[jax.devices()[0]] * 2)  # a two-entry mesh is enough to check the rule
    with pytest.raises(ValueError, match="batch_size=63 does not split evenly over 2 devices"):
        place.check_batch("batch_size", 63)
    with pytest.raises(ConfigError, match="data_parallel=true shards image or digits batches"):
        resolve("digits-mlp", {"data_parallel": True, "optimizer": "kfac"})
