"""Everything a study can fit, behind one protocol (``base.Model``): attention readers
(``reader``) and the baselines (``majority``, ``length``, ``tfidf``, ``embedding``).
Kinds load lazily (``base.KINDS``)."""

from harness.models.base import FitResult, Model, load_model

__all__ = ["FitResult", "Model", "load_model"]
