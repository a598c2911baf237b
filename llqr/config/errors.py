"""The configuration error every check raises, and the "did you mean" hint its messages carry."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration problem, detected before any training starts."""


def suggest(word: str, candidates) -> str:
    """' (did you mean X?)' when something close exists, else ''."""
    names = [str(c) for c in candidates if c is not None]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close and len(str(word)) >= 3:
        close = [n for n in names if n.startswith(str(word))][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""

