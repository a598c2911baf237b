"""``python -m llqr.plan``: the entry point of llqr.workflow.plan (the dry-run preview and cost)."""
