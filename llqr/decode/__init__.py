"""Sequence decoding for the translation model."""

from .beam import beam_search, greedy_decode

__all__ = ["beam_search", "greedy_decode"]
