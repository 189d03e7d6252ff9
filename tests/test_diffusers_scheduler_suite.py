"""diffusers' own TCD / LCM scheduler tests, run against fewstep's schedulers (issue 10).

The tests are diffusers v0.35.2's tests/schedulers/test_scheduler_tcd.py, test_scheduler_lcm.py and the
SchedulerCommonTest they inherit (test_schedulers.py), vendored unchanged under
tests/diffusers_scheduler_suite/ (its README says from which commit). Here they are subclassed with
`scheduler_classes` set to fewstep's class, which is the only place those tests take the scheduler from:
they build it as `scheduler_classes[0](**config)` and reload it with `scheduler_class.from_pretrained`,
`from_config`, `save_config` / `save_pretrained`. The common test's other diffusers names (Euler, LMS,
CMStochasticIterative, EDMEuler, VQDiffusion, IPNDM) only select special cases for those schedulers,
which neither TCD nor LCM takes, so nothing else needs patching. `test_compatibles` loads fewstep's
`compatibles` (diffusers' classes) from fewstep's config and back, as a pipeline swapping schedulers does.

A test that exercises a difference listed in README.md "Deliberate differences from diffusers" is
skipped by name in DELIBERATE_SKIPS, with the README line quoted as the reason (pytest reports it as
skipped, never as passed); `test_skip_reasons_quote_the_readme` checks each quote is still in that
README section and each name is a test of the vendored class. No test is skipped otherwise.
"""

import os
import re
import sys
import unittest

import pytest

pytestmark = pytest.mark.torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_README = os.path.join(os.path.dirname(_HERE), "README.md")
_README_SECTION = "## Deliberate differences from diffusers"

# Deliberate differences that a vendored test exercises: {("tcd" | "lcm", test name): README line}, the
# line quoted verbatim (e.g. its bold lead sentence); it becomes the skip reason. At diffusers v0.35.2
# none meets one: none of the vendored tests uses strength < 1, zero-terminal SNR, a timestep off the
# schedule, or a folder of another scheduler class.
DELIBERATE_SKIPS: dict = {}

if _HERE not in sys.path:  # the vendored package lives next to this file
    sys.path.insert(0, _HERE)

try:
    import torch

    import fewstep

    _allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    from diffusers_scheduler_suite.schedulers import test_scheduler_lcm as _diffusers_lcm
    from diffusers_scheduler_suite.schedulers import test_scheduler_tcd as _diffusers_tcd

    # test_schedulers.py turns TF32 off for the whole process on import; keep the other tests' setting.
    torch.backends.cuda.matmul.allow_tf32 = _allow_tf32
except ImportError as err:  # torch / diffusers missing: the `torch` marker skips (or, in CI, fails) this
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None


def _readme_differences():
    """The bullet lines of the README section on deliberate differences, joined per bullet."""
    with open(_README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(_README_SECTION) + len(_README_SECTION)
    end = text.find("\n## ", start)
    section = text[start:end if end >= 0 else len(text)]
    bullets = re.split(r"\n- ", "\n" + section.strip())
    return [" ".join(b.split()) for b in bullets if b.strip()]


def _skip_deliberate(cls, suite):
    """Replace each test listed for `suite` with an explicit skip quoting its README line."""
    for (name_suite, name), readme_line in DELIBERATE_SKIPS.items():
        if name_suite != suite:
            continue
        original = getattr(cls, name)  # AttributeError here: the name is not a test of the vendored class
        reason = f"deliberate difference from diffusers, README: {readme_line}"
        setattr(cls, name, unittest.skip(reason)(original))
    return cls


if _IMPORT_ERROR is None:
    # Module aliases, not class names: pytest collects every unittest.TestCase in this module's
    # namespace, and the vendored classes themselves would test diffusers' schedulers.

    class TestDiffusersTCDSuite(_diffusers_tcd.TCDSchedulerTest):
        """diffusers v0.35.2 TCDSchedulerTest with fewstep.TCDScheduler."""

        scheduler_classes = (fewstep.TCDScheduler,)

    class TestDiffusersLCMSuite(_diffusers_lcm.LCMSchedulerTest):
        """diffusers v0.35.2 LCMSchedulerTest with fewstep.LCMScheduler."""

        scheduler_classes = (fewstep.LCMScheduler,)

    _skip_deliberate(TestDiffusersTCDSuite, "tcd")
    _skip_deliberate(TestDiffusersLCMSuite, "lcm")

    def test_skip_reasons_quote_the_readme():
        differences = _readme_differences()
        assert differences, f"README.md has no bullets under {_README_SECTION!r}"
        bases = {"tcd": _diffusers_tcd.TCDSchedulerTest, "lcm": _diffusers_lcm.LCMSchedulerTest}
        for (suite, name), readme_line in DELIBERATE_SKIPS.items():
            assert name.startswith("test_") and callable(getattr(bases[suite], name, None)), (suite, name)
            assert any(readme_line in bullet for bullet in differences), (
                f"skip of {suite}:{name} quotes {readme_line!r}, which is no longer in README.md "
                f"{_README_SECTION!r}"
            )

    def test_suite_runs_fewstep_classes():
        """The subclasses really substitute fewstep's schedulers, and the vendored tests are all there."""
        assert TestDiffusersTCDSuite.scheduler_classes == (fewstep.TCDScheduler,)
        assert TestDiffusersLCMSuite.scheduler_classes == (fewstep.LCMScheduler,)
        names = unittest.defaultTestLoader.getTestCaseNames
        assert len(names(TestDiffusersTCDSuite)) == len(names(_diffusers_tcd.TCDSchedulerTest)) == 24
        assert len(names(TestDiffusersLCMSuite)) == len(names(_diffusers_lcm.LCMSchedulerTest)) == 24

else:

    def test_diffusers_scheduler_suite_importable():
        raise _IMPORT_ERROR
