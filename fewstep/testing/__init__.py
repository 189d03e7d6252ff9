"""Helpers shared by tests, examples and benchmarks: tiny diffusers-format models built offline.

Importing this package imports no framework; `tiny_pipeline` and the adapter builders (ControlNet,
T2I-Adapter, DPT, IP-Adapter, AnimateDiff's MotionAdapter (SD 1.5 and SDXL) and motion LoRA, a
MultiAdapter pipeline folder, an LCM pipeline folder, an AutoencoderTiny in TAESD / TAESDXL's layout for
`vae=`) import torch, diffusers and transformers when they have to build a folder.
`tiny_checkpoint` writes a tiny pipeline's weights as one single-file checkpoint in the original (LDM / SGM) layout.
`assert_parity` compares two pipelines stage by stage (`fewstep.parity`) for equivalence tests.
"""

from fewstep.testing.parity import ParityError, assert_parity
from fewstep.testing.tiny_adapters import (tiny_controlnet, tiny_dpt, tiny_lcm_pipeline, tiny_multi_adapter_pipeline,
                                           tiny_t2i_adapter)
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, IP_ADAPTER_IMAGE_ENCODERS, tiny_ip_adapter
from fewstep.testing.tiny_models import KINDS, tiny_pipeline
from fewstep.testing.tiny_motion import (MOTION_LORA_WEIGHT_NAME, tiny_motion_adapter, tiny_motion_lora,
                                         tiny_sdxl_motion_adapter)
from fewstep.testing.tiny_refiner import tiny_refiner, tiny_refiner_checkpoint
from fewstep.testing.tiny_single_file import tiny_checkpoint
from fewstep.testing.tiny_vae import TINY_VAE_KINDS, tiny_autoencoder_tiny

__all__ = ["KINDS", "tiny_pipeline", "tiny_controlnet", "tiny_t2i_adapter", "tiny_dpt", "tiny_ip_adapter",
           "IP_ADAPTER_FILES", "IP_ADAPTER_IMAGE_ENCODERS", "tiny_motion_adapter", "tiny_motion_lora",
           "MOTION_LORA_WEIGHT_NAME", "tiny_sdxl_motion_adapter", "tiny_multi_adapter_pipeline", "tiny_lcm_pipeline",
           "tiny_checkpoint", "tiny_refiner", "tiny_refiner_checkpoint", "tiny_autoencoder_tiny", "TINY_VAE_KINDS",
           "assert_parity", "ParityError"]
