"""Helpers shared by tests, examples and benchmarks: tiny diffusers-format models built offline.

Importing this package imports no framework; `tiny_pipeline` and the adapter builders import torch,
diffusers and transformers when they have to build a folder.
"""

from fewstep.testing.tiny_adapters import tiny_controlnet, tiny_dpt, tiny_t2i_adapter
from fewstep.testing.tiny_models import KINDS, tiny_pipeline

__all__ = ["KINDS", "tiny_pipeline", "tiny_controlnet", "tiny_t2i_adapter", "tiny_dpt"]
