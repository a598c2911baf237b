"""Golden results: a dozen tiny cells that pass through every part of the runner (plain, LLQR
diagonal and e-kfac, each SAM mode, SVAG with noise statistics, noisy GD, SINGD and KFAC, bf16,
translation, a tuned cell, a resume after SIGTERM) must give what they gave when recorded.

On the machine and JAX version that recorded them the comparison is exact (every byte of the
reduced summary and metrics). XLA's CPU code differs between processors, so elsewhere a value
passes within a stated tolerance: relative 1e-3 for losses and noise statistics, 1 point for
accuracies and BLEU (3 of the 359 digits test images), exact for everything else (ids, params,
steps, statuses, event order). Re-record on purpose only: ``python tests/golden/record.py``.
"""

from __future__ import annotations

import json
import math

import pytest

from golden.golden import EXPECTED, golden_cells, machine, prepare_data, run_cell

EXPECTED_DATA = json.loads(EXPECTED.read_text())
SAME_MACHINE = EXPECTED_DATA["machine"] == machine()
POINTS = ("accuracy", "bleu")  # keys measured in percent / BLEU points


@pytest.fixture(scope="module")
def cells():
    return golden_cells()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return prepare_data(tmp_path_factory.mktemp("golden"))


def test_the_recording_covers_every_golden_cell(cells):
    assert sorted(cells) == sorted(EXPECTED_DATA["cells"])


@pytest.mark.parametrize("label", sorted(EXPECTED_DATA["cells"]))
def test_cell_ids_and_params_are_unchanged(cells, label):
    expected = EXPECTED_DATA["cells"][label]
    cell = cells[label]
    assert (cell.id, json.loads(cell.config_json), cell.settings) == (
        expected["id"], expected["params"], expected["settings"])


@pytest.mark.parametrize("label", sorted(EXPECTED_DATA["cells"]))
def test_cell_reproduces_its_recorded_outputs(cells, data_root, tmp_path, label):
    got = run_cell(label, cells[label], tmp_path, data_root)
    expected = EXPECTED_DATA["cells"][label]
    if SAME_MACHINE:
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), _first_difference(
            got, expected)
    else:
        _assert_close(got, expected, label)


def _first_difference(got, expected, path="") -> str:
    if type(got) is not type(expected):
        return f"{path}: {got!r} != {expected!r}"
    if isinstance(got, dict):
        for key in sorted(set(got) | set(expected)):
            if key not in got or key not in expected:
                return f"{path}/{key}: present in only one"
            diff = _first_difference(got[key], expected[key], f"{path}/{key}")
            if diff:
                return diff
        return ""
    if isinstance(got, list):
        if len(got) != len(expected):
            return f"{path}: length {len(got)} != {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected)):
            diff = _first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return ""
    return "" if got == expected else f"{path}: {got!r} != {expected!r}"


def _assert_close(got, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), where
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)), where
        if any(p in where.rsplit("/", 1)[-1] for p in POINTS) or where.endswith("/final/value") or (
                where.endswith("/best/value")):
            assert abs(got - expected) <= 1.0, f"{where}: {got} vs {expected} (tolerance 1 point)"
        else:
            assert math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-6), f"{where}: {got} vs {expected}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"
