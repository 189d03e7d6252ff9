"""LoRA in core: read a file (reading.py), split its keys (keys.py), map SGM names (sgm.py), check it
against a model and normalise it to {component: {module path: LoraLayer}} (normalise.py), the
fusion maths on any backend through TensorOps (fusion.py), and which terms each fused weight holds as
adapters, weights and scales change (plan.py). NumPy and the standard library only."""

from fewstep.core.lora.errors import LoraError
from fewstep.core.lora.fusion import LoraLayer, fused_weight
from fewstep.core.lora.normalise import normalise
from fewstep.core.lora.reading import (DEFAULT_WEIGHT_NAME, LoraSource, find_weight_file, read_header, read_lora,
                                      read_safetensors)

__all__ = ["DEFAULT_WEIGHT_NAME", "LoraError", "LoraLayer", "LoraSource", "find_weight_file", "fused_weight",
           "normalise", "read_header", "read_lora", "read_safetensors"]
