"""What a run evaluates, when, and which metric its summary reports: one class per task.

Both share one interface, so the runner's loop is the same for images and translation:
``due(step, total)`` says whether ``evaluate`` runs at this loop step (before the step's update),
``final(...)`` gives the end-of-run metrics, ``metric`` names the summary's headline value,
``mode`` whether higher (max) or lower (min) is better, and ``keeps_best`` says whether a best
checkpoint is kept (translation, by full valid BLEU).
"""

from __future__ import annotations


def periodic(step: int, every: int, total_steps: int) -> bool:
    return step % every == 0 and (step != 0 or total_steps == 1)


class ClassificationEval:
    """Test accuracy (%) and test loss (unsmoothed unless eval_label_smoothing) of the inference model,
    every test_eval_freq."""

    metric, label, keeps_best, mode = "test_accuracy", "test_acc", False, "max"

    def __init__(self, eval_sums, data, cfg):
        self.eval_sums, self.data, self.cfg = eval_sums, data, cfg
        self.batch_size = cfg.eval_batch_size or cfg.batch_size

    def due(self, step: int, total_steps: int) -> bool:
        return periodic(step, self.cfg.test_eval_freq, total_steps)

    def evaluate(self, state, step: int, total_steps: int) -> dict:
        loss_sum, correct = 0.0, 0
        for x, y in self.data.eval_batches(self.batch_size):
            l_sum, c, _n = self.eval_sums(state.params, state.batch_stats, x, y)
            loss_sum += float(l_sum)
            correct += int(c)
        n = self.data.test_size
        return {"test_accuracy": 100.0 * correct / n, "test_loss": loss_sum / n}

    def final(self, state, last_event: dict | None, final_step: int) -> dict:
        """Ours: an explicit final evaluation (reused when the last periodic one was at the end)."""
        if last_event and last_event["step"] == final_step:
            return {k: v for k, v in last_event.items() if k.startswith("test_")}
        return self.evaluate(state, final_step, final_step + 1)


class RegressionEval(ClassificationEval):
    """Regression (float targets): the test loss (the training loss's mean over every target value,
    the HyperbolicLR study's validation loss) every test_eval_freq, lower is better; no accuracy."""

    metric, label, keeps_best, mode = "test_loss", "test_loss", False, "min"

    def evaluate(self, state, step: int, total_steps: int) -> dict:
        loss_sum, n = 0.0, 0.0
        for x, y in self.data.eval_batches(self.batch_size):
            l_sum, count = self.eval_sums(state.params, state.batch_stats, x, y)
            loss_sum += float(l_sum)
            n += float(count)
        return {"test_loss": loss_sum / n}
