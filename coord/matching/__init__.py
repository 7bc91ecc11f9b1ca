"""Expertise matching: lexical ranking (tags + full text) here; semantic and hybrid in later modules."""

from coord.matching.lexical import rank_lexical

__all__ = ["rank_lexical"]
