"""A parity report as plain text: one table row per stage and call, then the verdicts (first stage and
first module out of bounds, the final image against its tolerance) and where the two sides ran.

Standard library only; numbers are printed with three significant digits (``%.3g``), so ``inf`` and
``nan`` print as themselves."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .report import ParityReport, StageDiff

_COLUMNS = ("stage", "shape", "max abs", "max rel", "rel L2", "bound", "ok")
_OUT_OF_BOUNDS = "!!"


def format_report(report: ParityReport) -> str:
    """The report as a compact text table and summary, for a terminal or a CI log.

    Args:
        report (`ParityReport`):
            The comparison to print. Its images are not used.

    Returns:
        `str`: lines without a trailing newline: the stage table (a row per stage and call, in recorded
        order, ``!!`` in the ok column where a stage is out of its bound, a note after it when the stage
        has one), ``first stage out of bounds: ...``, ``first divergent module: ...``, both sides, the
        final image against the tolerance with PASS or FAIL, and the environment as ``key: value``.
    """
    lines = _table(report.stages) if report.stages else ["(no stages recorded)"]
    lines.append("")
    lines.append(f"first stage out of bounds: {_first_stage(report)}")
    lines.append(f"first divergent module: {_first_module(report)}")
    lines.append(f"side a: {_side(report.side_a)}")
    lines.append(f"side b: {_side(report.side_b)}")
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"image max abs {_num(report.image_max_abs)} vs tolerance {_num(report.tolerance)}: {verdict}")
    if report.environment:
        lines.append("environment:")
        lines.extend(f"  {key}: {value}" for key, value in report.environment.items())
    return "\n".join(lines)


def _num(value: Any) -> str:
    try:
        return "%.3g" % float(value)
    except (TypeError, ValueError):
        return str(value)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "()"


def _table(stages: List[StageDiff]) -> List[str]:
    rows = [
        (s.label, _shape(s.shape), _num(s.max_abs), _num(s.max_rel), _num(s.rel_l2), _num(s.bound),
         "ok" if s.ok else _OUT_OF_BOUNDS)
        for s in stages
    ]
    widths = [max(len(row[i]) for row in rows + [_COLUMNS]) for i in range(len(_COLUMNS))]

    def line(row, note=""):
        # Text columns flush left, numbers flush right, so decimal exponents line up.
        cells = [row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in range(len(row))]
        return ("  ".join(cells) + (f"  {note}" if note else "")).rstrip()

    return [line(_COLUMNS)] + [line(row, s.note) for row, s in zip(rows, stages)]


def _first_stage(report: ParityReport) -> str:
    s = report.first_stage
    if s is None:
        return "none"
    return f"{s.label}: rel L2 {_num(s.rel_l2)} > bound {_num(s.bound)}" + (f" ({s.note})" if s.note else "")


def _first_module(report: ParityReport) -> str:
    m = report.first_module
    if m is None:
        if report.modules:
            return f"not localised (all {len(report.modules)} modules within bounds in the rerun)"
        return "not localised"
    where = f" [rerun of {report.localised_stage}]" if report.localised_stage else ""
    return (f"{m.path} (call {m.call}): output rel L2 {_num(m.output_rel_l2)}, "
            f"input rel L2 {_num(m.input_rel_l2)}{where}")


def _side(side: Dict[str, Any]) -> str:
    """"label  key=value ..." with the label first and the other keys in their order."""
    label = side.get("label")
    rest = "  ".join(f"{k}={v}" for k, v in side.items() if k != "label" and v not in (None, ""))
    return "  ".join(part for part in (str(label) if label is not None else "", rest) if part) or "(unknown)"
