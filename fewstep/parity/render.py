"""A parity report on disk: one folder with ``report.json`` (the numbers), ``images.png`` (the two final
images and where they differ) and ``latents.png`` (rel L2 per step), and the JSON read back.

Each file is written through fewstep.core.files (an unpredictable temporary name, renamed onto the target), so
a folder never holds half a file and a link planted at a name is replaced, not written through. The
text form is `text.format_report`; the pictures are drawn in `pictures`."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Union

import numpy as np

from fewstep.core.files import write_with

from .pictures import images_picture, steps_plot
from .report import ParityReport
from .text import format_report

__all__ = ["format_report", "write_report", "read_report", "REPORT_JSON", "IMAGES_PNG", "LATENTS_PNG"]

REPORT_JSON = "report.json"
IMAGES_PNG = "images.png"
LATENTS_PNG = "latents.png"

# The numeric fields that may hold inf or NaN; JSON has neither, so they are written as the strings
# "inf", "-inf", "nan" and read back as floats.
_NUMBERS = frozenset({"max_abs", "max_rel", "rel_l2", "bound", "output_rel_l2", "output_max_abs",
                      "input_rel_l2", "tolerance", "image_max_abs"})


def write_report(report: ParityReport, directory: Union[str, os.PathLike]) -> Dict[str, str]:
    """Write the report's files into `directory` (created if missing; files of the same names replaced).

    Args:
        report (`ParityReport`):
            The comparison to write.
        directory (`str` or `os.PathLike`):
            The folder to write into.

    Returns:
        `Dict[str, str]`: the absolute paths written, by kind: ``"report"`` (``report.json``, always: the report's
        `to_dict()`, indented, strict JSON with inf / NaN as strings), ``"images"`` (``images.png``, only
        when `report.images` is set) and ``"latents"`` (``latents.png``, only when the report has a
        per-step stage: ``unet.input``, ``unet.output``, ``guidance`` or ``scheduler``). A picture that is
        not written is absent from the dict; a file of that name left in the folder by an earlier report
        is not touched.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    written = {}

    data = _strict_json(report.to_dict())
    written["report"] = write_with(os.path.join(directory, REPORT_JSON), lambda f: _dump(data, f), "w")
    for kind, name, picture in (("images", IMAGES_PNG, images_picture(report)),
                                ("latents", LATENTS_PNG, steps_plot(report))):
        if picture is not None:
            written[kind] = write_with(os.path.join(directory, name), lambda f: picture.save(f, format="PNG"))
    return written


def read_report(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read back the ``report.json`` that `write_report` wrote.

    Args:
        directory (`str` or `os.PathLike`):
            The report's folder, or the path of its ``report.json``.

    Returns:
        `Dict[str, Any]`: the report's `to_dict()` as written (shapes as lists), with the numeric fields
        that were written as "inf", "-inf" or "nan" floats again.
    """
    path = os.fspath(directory)
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no parity report at {path}: pass the folder given to write_report "
                                f"(it holds {REPORT_JSON}) or the path of the {REPORT_JSON} itself")
    with open(path, encoding="utf-8") as f:
        return _restore_numbers(json.load(f))


def _dump(data, f) -> None:
    json.dump(data, f, indent=2, allow_nan=False, default=str)
    f.write("\n")


def _strict_json(value):
    """`to_dict()` output made strict JSON: every non-finite float, NumPy ones included, as its string.

    (`to_dict` already does this for Python floats; a NumPy scalar such as np.float64("inf") can reach it
    and come out as a bare inf, which json writes as the non-standard `Infinity`.)"""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _restore_numbers(value, key: str = ""):
    if isinstance(value, dict):
        return {k: _restore_numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_numbers(v, key) for v in value]
    if key in _NUMBERS and isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value
