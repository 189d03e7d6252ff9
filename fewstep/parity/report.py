"""What a parity run found: a table of differences per stage and call, the first stage and the first
module out of bounds, and where the two runs ran. Plain data (NumPy only), so it can be written as
JSON, printed, drawn, or asserted on in a test."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class StageDiff:
    """One recorded tensor compared between the two sides.

    `stage` names what was recorded ("text_encoder.hidden", "unet.output", "scheduler", "vae.decoder",
    "image", ...), `index` which call of it (the step for per-step stages). `rel_l2` is
    ||a - b|| / max(||a||, ||b||); it is what `bound` applies to."""

    stage: str
    index: int
    shape: tuple
    max_abs: float
    max_rel: float
    rel_l2: float
    bound: float
    ok: bool
    note: str = ""          # e.g. "shapes differ", "missing on side b"

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.index}]"


@dataclass
class ModuleDiff:
    """One submodule's output compared when a model call is rerun on both sides with the same inputs.

    `input_rel_l2` is the difference of what reached the module: a module that only amplifies an
    upstream difference has a large input difference; the one that introduces it has a small one."""

    path: str
    call: int               # which call of this module within the rerun (modules may run several times)
    output_rel_l2: float
    output_max_abs: float
    input_rel_l2: float
    bound: float
    ok: bool


@dataclass
class ParityReport:
    side_a: Dict[str, Any]                  # label, backend, library, dtype, device, model
    side_b: Dict[str, Any]
    stages: List[StageDiff]
    tolerance: float                        # on the final image's max abs difference
    image_max_abs: float
    environment: Dict[str, Any] = field(default_factory=dict)
    localised_stage: Optional[str] = None   # the stage label whose model call was rerun per layer
    modules: List[ModuleDiff] = field(default_factory=list)   # in execution order
    images: Optional[tuple] = field(default=None, repr=False)  # (a, b) float arrays in [0, 1], NHWC

    @property
    def passed(self) -> bool:
        """The final image is within `tolerance` (what the CLI's exit status and CI gates follow)."""
        return bool(self.image_max_abs <= self.tolerance)

    @property
    def first_stage(self) -> Optional[StageDiff]:
        """The first recorded stage (in execution order) out of its bound."""
        return next((s for s in self.stages if not s.ok), None)

    @property
    def first_module(self) -> Optional[ModuleDiff]:
        """The first submodule (in execution order) whose output is out of bounds in the rerun."""
        return next((m for m in self.modules if not m.ok), None)

    def stage_series(self, stage: str) -> List[StageDiff]:
        """Every call of one stage in order (e.g. "scheduler": the latents after each step)."""
        return [s for s in self.stages if s.stage == stage]

    def to_dict(self) -> Dict[str, Any]:
        """Everything but the images, JSON-ready."""
        out = {
            "side_a": self.side_a,
            "side_b": self.side_b,
            "tolerance": self.tolerance,
            "image_max_abs": self.image_max_abs,
            "passed": self.passed,
            "first_stage": self.first_stage.label if self.first_stage else None,
            "first_module": asdict(self.first_module) if self.first_module else None,
            "localised_stage": self.localised_stage,
            "stages": [dict(asdict(s), shape=list(s.shape)) for s in self.stages],
            "modules": [asdict(m) for m in self.modules],
            "environment": self.environment,
        }
        return _json_ready(out)


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no inf / nan
    return value
