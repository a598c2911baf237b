"""Step accounting, shared by the runner and the cost preview (JAX-free, plain numbers)."""

from __future__ import annotations


def updates_per_run(mbpe: float, epochs: float, grad_acc_steps: int = 1, max_steps: int | None = None,
                    svag_l: int = 1) -> int:
    """Parameter updates of a run: ``floor(mbpe * epochs / grad_acc)``, capped by ``max_steps``,
    times SVAG's l (l steps at LR/l per SGD step). ``mbpe``: micro-batches per epoch, a float
    ``train_size / batch_size`` for classification, the token batches for translation."""
    total = int((mbpe * epochs) // grad_acc_steps)
    if max_steps is not None:
        total = min(total, max_steps)
    return total * svag_l


def step_accounting(cfg, mbpe: float) -> tuple[float, int]:
    """(steps per epoch, loop steps incl. the final no-update sentinel) of the reference runner,
    before SVAG's stretch (the runner applies it with the stretched schedule)."""
    return mbpe / cfg.grad_acc_steps, updates_per_run(mbpe, cfg.total_epochs, cfg.grad_acc_steps, cfg.max_steps) + 1
