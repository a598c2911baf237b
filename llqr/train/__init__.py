"""Training runner. ``run`` (in ``llqr.train.loop``) trains one cell; ``python -m llqr.train`` wraps it."""
