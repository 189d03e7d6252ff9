"""Helpers shared by tests, examples and benchmarks: tiny diffusers-format models built offline.

Importing this package imports no framework; `tiny_pipeline` imports torch, diffusers and
transformers when it has to build a folder.
"""

from fewstep.testing.tiny_models import KINDS, tiny_pipeline

__all__ = ["KINDS", "tiny_pipeline"]
