"""Evaluation of translation runs: token metrics, beam-search BLEU, and when BLEU is due.

Cadence and names follow the reference (docs/workflow.md, "Translation"): every
``test_eval_freq`` the valid token accuracy and loss; a "full" BLEU on the whole valid split every
``full_eval_freq`` and at the end, otherwise a "sampled" BLEU on the first ``bleu_max_examples``
valid sentences every ``bleu_sampled_freq``. Ours: the final evaluation also scores the test
split, so valid (as the reference) and test BLEU are both reported.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..decode.beam import beam_search
from ..decode.bleu import corpus_bleu
from .evaluators import periodic


def bleu_kind(cfg, step: int, total_steps: int) -> str | None:
    """"full", "sampled" or None at loop step ``step``."""
    last = step == total_steps - 1
    if (cfg.full_eval_at_end and last) or (cfg.full_eval_freq and periodic(step, cfg.full_eval_freq, total_steps)):
        return "full"
    freq = cfg.test_eval_freq if cfg.bleu_sampled_freq is None else cfg.bleu_sampled_freq
    if freq and periodic(step, freq, total_steps):
        return "sampled"
    return None


class TranslationEval:
    """Valid token metrics and BLEU during the run; valid and test at the end (the evaluator
    interface of llqr.train.evaluators). The summary's metric is the final full valid BLEU; the
    best checkpoint follows full valid BLEU (strictly greater), as the reference's."""

    metric, label, keeps_best, mode = "valid_bleu", "valid_bleu", True, "max"

    def __init__(self, model, data, cfg, eval_sums):
        """``eval_sums(params, batch_stats, x, y)``: the runner's jitted (NLL, hits, count) with
        pad positions left out, the same function image runs evaluate with."""
        self.model, self.data, self.cfg, self.eval_sums = model, data, cfg, eval_sums
        self.batch_size = cfg.eval_batch_size or 128

    @staticmethod
    def _variables(state) -> dict:
        return {"params": state.params}

    def due(self, step: int, total_steps: int) -> bool:
        return (periodic(step, self.cfg.test_eval_freq, total_steps)
                or bleu_kind(self.cfg, step, total_steps) is not None)

    def evaluate(self, state, step: int, total_steps: int) -> dict:
        variables, metrics = self._variables(state), {}
        if periodic(step, self.cfg.test_eval_freq, total_steps):
            metrics.update(self.token_metrics(state, "valid"))
        kind = bleu_kind(self.cfg, step, total_steps)
        if kind == "full":
            metrics.update(bleu_metrics(self.bleu(variables, "valid"), "valid_bleu"))
        elif kind == "sampled":
            result = self.bleu(variables, "valid", max_examples=self.cfg.bleu_max_examples)
            metrics.update(bleu_metrics(result, "valid_bleu_sampled"))
        return metrics

    def final(self, state, last_event: dict | None, final_step: int) -> dict:
        """Valid metrics (reused from an evaluation at the final step) plus the test split's."""
        variables = self._variables(state)
        last = last_event if last_event and last_event["step"] == final_step else {}
        metrics = {k: v for k, v in last.items() if k.startswith("valid_")}
        if "valid_token_accuracy" not in metrics:
            metrics.update(self.token_metrics(state, "valid"))
        if "valid_bleu" not in metrics:
            metrics.update(bleu_metrics(self.bleu(variables, "valid"), "valid_bleu"))
        metrics.update(self.token_metrics(state, "test"))
        metrics.update(bleu_metrics(self.bleu(variables, "test"), "test_bleu"))
        return metrics

    def token_metrics(self, state, split: str = "valid") -> dict:
        """Token accuracy (%), loss (nats/token), nll in bits and perplexity, unsmoothed."""
        nll, hits, count = 0.0, 0.0, 0.0
        for x, y, _ids in self.data.eval_batches(split, self.batch_size):
            a, b, c = self.eval_sums(state.params, state.batch_stats, x, y)
            nll, hits, count = nll + float(a), hits + float(b), count + float(c)
        loss = nll / max(count, 1.0)
        bits = loss / math.log(2.0)
        return {f"{split}_token_accuracy": 100.0 * hits / max(count, 1.0), f"{split}_loss": loss,
                f"{split}_nll_loss": bits, f"{split}_ppl": 2.0 ** bits}

    def translate(self, variables, split: str, max_examples: int | None = None) -> tuple[list[str], list[int]]:
        """BPE'd hypotheses (decoded with the target dictionary) and their example ids."""
        hyps, ids = [], []
        for (src, _prev), _y, example_ids in self.data.eval_batches(split, self.batch_size, max_examples=max_examples):
            tokens, _scores = beam_search(self.model, variables, src, beam_size=self.cfg.beam_size)
            tokens = np.asarray(tokens)
            for row, example in enumerate(example_ids):
                hyps.append(self.data.decode(tokens[row], unk="UNKNOWNTOKENINHYP"))
                ids.append(int(example))
        return hyps, ids

    def bleu(self, variables, split: str = "valid", max_examples: int | None = None) -> dict:
        """SacreBLEU and its statistics; ``max_examples`` scores only the first k sentences."""
        t0 = time.time()
        hyps, ids = self.translate(variables, split, max_examples)
        result = corpus_bleu(hyps, self.data.references(split, ids))
        result["decode_s"] = round(time.time() - t0, 3)
        return result


def bleu_metrics(result: dict, name: str) -> dict:
    """Flat metrics of one BLEU result: ``<name>``, its examples and (full BLEU) its statistics."""
    metrics = {name: result["bleu"], f"{name}_examples": result["examples"]}
    if not name.endswith("_sampled"):
        for i, (c, t) in enumerate(zip(result["counts"], result["totals"])):
            metrics[f"{name}_counts_{i}"], metrics[f"{name}_totals_{i}"] = c, t
        metrics[f"{name}_sys_len"], metrics[f"{name}_ref_len"] = result["sys_len"], result["ref_len"]
    return metrics
