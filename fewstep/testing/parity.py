"""`assert_parity`: a cross-framework (or cross-dtype, cross-library, cross-checkpoint) equivalence
assertion for pytest, failing with the stage table and the first divergent module.

    import fewstep
    from fewstep.parity import load_side
    from fewstep.testing import assert_parity

    def test_my_port_matches_torch():
        torch_side = load_side("path/to/model", backend="torch")
        ms_side = load_side("path/to/model", backend="mindspore")
        assert_parity(torch_side, ms_side, {"prompt": "a red fox", "num_inference_steps": 4, "eta": 0.3})
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from fewstep.parity import compare, format_report
from fewstep.parity.metrics import DEFAULT_ATOL


class ParityError(AssertionError):
    """Two runs differ beyond their bounds; `.report` holds the full ParityReport."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


def assert_parity(side_a: Any, side_b: Any, call_kwargs: Optional[Dict[str, Any]] = None, rtol: Optional[float] = None,
                  atol: float = DEFAULT_ATOL, tolerance: Optional[float] = None, seed: int = 0):
    """Run one call on both sides and fail unless every stage is within its bound and the final images
    within `tolerance`.

    Args:
        side_a (`fewstep.parity.Side` or a pipeline):
            The reference side (fewstep, diffusers or mindone pipeline).
        side_b (`fewstep.parity.Side` or a pipeline):
            The side under test.
        call_kwargs (`dict`, *optional*):
            The pipeline call's arguments (no generator or latents: both sides get the same ones).
        rtol (`float`, *optional*):
            Relative-L2 bound of every stage; default by the sides' dtypes.
        atol (`float`, *optional*, defaults to 1e-06):
            A stage whose every element differs by at most atol passes whatever its relative difference.
        tolerance (`float`, *optional*):
            Max abs difference allowed on the final images in [0, 1]; default by dtype.
        seed (`int`, *optional*, defaults to 0):
            The seed both sides draw from.

    Returns:
        The `ParityReport`, for further checks. Raises `ParityError` (an AssertionError) with the stage
        table, the first stage out of bounds and the first divergent module otherwise.
    """
    report = compare(side_a, side_b, call_kwargs, seed=seed, rtol=rtol, atol=atol, tolerance=tolerance)
    if report.first_stage is not None or not report.passed:
        first = report.first_stage
        module = report.first_module
        headline = (f"{report.side_a['label']} and {report.side_b['label']} part at "
                    f"{first.label if first else 'the final image'}"
                    + (f", first in module {module.path}" if module else ""))
        raise ParityError(headline + "\n\n" + format_report(report), report)
    return report
