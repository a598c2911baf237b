"""Data problems the runner records as a cell status instead of crashing mid-way."""


class DataError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says what was expected where."""
