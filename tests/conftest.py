"""Test configuration: backend markers, and the CI switch that turns 'not installed' into a failure.

A test marked `torch` or `mindspore` is skipped with a reason when that framework cannot be
imported, so a laptop with only one framework still runs the rest. CI sets
FEWSTEP_REQUIRE_BACKENDS=1, under which a missing framework fails the test instead: a skipped
test must never count as a pass there.
"""

import importlib
import os

import pytest

# No model hub is reachable in tests: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_REQUIRED = os.environ.get("FEWSTEP_REQUIRE_BACKENDS", "") not in ("", "0")
_FRAMEWORKS = {"torch": ("torch", "diffusers"), "mindspore": ("mindspore", "mindone")}
_available = {}


def framework_available(marker: str):
    """(ok, reason) for a backend marker, importing its framework once."""
    if marker not in _available:
        reason = ""
        for module in _FRAMEWORKS[marker]:
            try:
                importlib.import_module(module)
            except Exception as err:  # ImportError, or a broken install raising something else
                reason = f"{module} is not importable: {err!r}"
                break
        _available[marker] = (not reason, reason)
    return _available[marker]


def pytest_runtest_setup(item):
    for marker in ("torch", "mindspore"):
        if item.get_closest_marker(marker) is None and not (marker == "torch" and item.get_closest_marker("parity")) \
                and not (marker == "mindspore" and item.get_closest_marker("parity")):
            continue
        ok, reason = framework_available(marker)
        if ok:
            continue
        if _REQUIRED:
            pytest.fail(f"FEWSTEP_REQUIRE_BACKENDS is set but {reason}")
        pytest.skip(reason)
