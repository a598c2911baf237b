"""The HyperbolicLR study's CIFAR task as its load_cifar10/load_cifar100 and CIFAR runner run it: per-image
zero-padded crop and flip, no Cutout, its normalisation constants, label smoothing 0.1 in the training and
the test loss, and (SimpleCNN) 10% subsets of both splits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llqr.config import ConfigError, list_presets, resolve
from llqr.data import eval_subset, train_subset
from llqr.data.arrays import ArrayDataset
from llqr.data.cifar import SPECS, normalization
from llqr.optim.losses import eval_sums, smoothed_cross_entropy

# the study's transforms.Normalize constants (paper/util.py)
STUDY_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
               "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}
HLR_CIFAR = [p for p in list_presets() if p.endswith(("-cifar10-hlr", "-cifar100-hlr"))]


def test_every_study_cifar_preset_runs_the_study_pipeline():
    assert {"cnn-cifar100-hlr", "resnet18-cifar100-hlr", "cnn-cifar10-hlr"} <= set(HLR_CIFAR)
    for name in HLR_CIFAR:
        cfg = resolve(name)
        assert (cfg.augment, cfg.crop_mode, cfg.crop_padding, cfg.cutout) == (True, "image", "zero", False), name
        assert (cfg.label_smoothing, cfg.eval_label_smoothing) == (0.1, True), name
        assert tuple(normalization(SPECS[cfg.dataset], cfg.normalization)) == STUDY_STATS[cfg.dataset], name
        subset = cfg.model == "simple_cnn"  # the study's subset_ratio cuts both splits alike
        assert (cfg.train_fraction, cfg.test_fraction) == ((0.1, 0.1) if subset else (1.0, 1.0)), name


def test_the_smoothed_test_loss_is_the_smoothed_training_loss_summed():
    logits = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = np.array([0, 3, 9, 3, 1, 2])
    both = jax.jit(lambda lp, y: (eval_sums(lp, y, label_smoothing=0.1), eval_sums(lp, y),
                                  smoothed_cross_entropy(lp, y, 0.1)))  # one compile
    (total, correct, count), (plain_total, plain_correct, _), mean = both(log_probs, labels)
    assert count == 6 and correct == plain_correct and float(total) != pytest.approx(float(plain_total))
    assert float(total) / 6 == pytest.approx(float(mean), rel=1e-6)


def _dataset(train: int, test: int) -> ArrayDataset:
    return ArrayDataset("toy", "", np.arange(train)[:, None], np.arange(train), np.arange(test)[:, None],
                        np.arange(test), 10)


def test_test_fraction_keeps_a_fixed_subset_of_the_test_split_only():
    data = _dataset(50, 40)
    cut = eval_subset(data, 0.25, seed=3)
    assert cut.test_size == 10 and cut.train_size == 50
    assert np.all(np.diff(cut.y_test) > 0) and np.array_equal(cut.y_test, eval_subset(data, 0.25, 3).y_test)
    assert not np.array_equal(cut.y_test, eval_subset(data, 0.25, 4).y_test)
    # drawn apart from the training subset's draw: not the same rows of equal-sized splits
    same = _dataset(40, 40)
    assert not np.array_equal(eval_subset(same, 0.25, 3).y_test, train_subset(same, 0.25, 3).y_train)


def test_test_fraction_needs_an_in_memory_dataset():
    with pytest.raises(ConfigError, match="test_fraction"):
        resolve("lstm-osc-hlr", {"test_fraction": 0.5})
