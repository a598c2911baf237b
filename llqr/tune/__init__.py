"""Hyperparameter tuning as workflow steps: Optuna TPE studies whose best trial feeds training cells."""
