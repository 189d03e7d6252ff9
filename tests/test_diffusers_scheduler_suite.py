"""diffusers' own TCD / LCM / DDIM / Euler / Euler-ancestral scheduler tests, run against fewstep's
schedulers (issues 10 and 27).

The tests are diffusers v0.35.2's tests/schedulers/test_scheduler_tcd.py, test_scheduler_lcm.py,
test_scheduler_ddim.py, test_scheduler_euler.py, test_scheduler_euler_ancestral.py and the
SchedulerCommonTest they inherit (test_schedulers.py), vendored unchanged under
tests/diffusers_scheduler_suite/ (its README says from which commit). Here they are subclassed with
`scheduler_classes` set to fewstep's class, which is the only place those tests take the scheduler from:
they build it as `scheduler_classes[0](**config)` and reload it with `scheduler_class.from_pretrained`,
`from_config`, `save_config` / `save_pretrained`. The common test's other diffusers names (Euler, LMS,
CMStochasticIterative, EDMEuler, VQDiffusion, IPNDM) only select special cases for diffusers' own classes
(fewstep's Euler classes are not those, so the common test passes them timesteps as diffusers' DDIM gets
them), so nothing else needs patching. `test_compatibles` loads fewstep's
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

# Deliberate differences that a vendored test exercises: {(suite, test name): README line}, the line
# quoted verbatim (e.g. its bold lead sentence); it becomes the skip reason. At diffusers v0.35.2 none of
# the TCD / LCM tests meets one; DDIM's builds zero-terminal SNR with epsilon prediction, and compares
# `timesteps` and `_get_variance` with torch.equal / torch.abs, which take torch tensors only.
_ZERO_SNR = "**Zero-terminal-SNR with epsilon prediction** fails when the scheduler is built"
_HOST_NUMBERS = "**Host numbers where diffusers gives torch tensors.**"
DELIBERATE_SKIPS: dict = {
    ("ddim", "test_rescale_betas_zero_snr"): _ZERO_SNR,
    ("ddim", "test_steps_offset"): _HOST_NUMBERS,
    ("ddim", "test_variance"): _HOST_NUMBERS,
}

if _HERE not in sys.path:  # the vendored package lives next to this file
    sys.path.insert(0, _HERE)

try:
    import torch

    import fewstep

    _allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    from fewstep.core.schedulers.ddim import DDIMScheduler
    from diffusers_scheduler_suite.schedulers import test_scheduler_ddim as _diffusers_ddim
    from diffusers_scheduler_suite.schedulers import test_scheduler_euler as _diffusers_euler
    from diffusers_scheduler_suite.schedulers import test_scheduler_euler_ancestral as _diffusers_euler_ancestral
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

    class TestDiffusersDDIMSuite(_diffusers_ddim.DDIMSchedulerTest):
        """diffusers v0.35.2 DDIMSchedulerTest with fewstep.DDIMScheduler."""

        scheduler_classes = (DDIMScheduler,)

    _skip_deliberate(TestDiffusersTCDSuite, "tcd")
    _skip_deliberate(TestDiffusersLCMSuite, "lcm")
    _skip_deliberate(TestDiffusersDDIMSuite, "ddim")

    try:  # written beside this suite (issue 27); until they exist, the test below fails with the ImportError
        from fewstep.core.schedulers.euler import EulerDiscreteScheduler
        from fewstep.core.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
    except ImportError as err:
        _EULER_IMPORT_ERROR = err
    else:
        _EULER_IMPORT_ERROR = None

        class TestDiffusersEulerSuite(_diffusers_euler.EulerDiscreteSchedulerTest):
            """diffusers v0.35.2 EulerDiscreteSchedulerTest with fewstep's EulerDiscreteScheduler."""

            scheduler_classes = (EulerDiscreteScheduler,)

        class TestDiffusersEulerAncestralSuite(_diffusers_euler_ancestral.EulerAncestralDiscreteSchedulerTest):
            """diffusers v0.35.2 EulerAncestralDiscreteSchedulerTest with fewstep's EulerAncestralDiscreteScheduler."""

            scheduler_classes = (EulerAncestralDiscreteScheduler,)

        _skip_deliberate(TestDiffusersEulerSuite, "euler")
        _skip_deliberate(TestDiffusersEulerAncestralSuite, "euler_ancestral")

    def test_euler_schedulers_importable():
        if _EULER_IMPORT_ERROR is not None:
            raise _EULER_IMPORT_ERROR

    def test_skip_reasons_quote_the_readme():
        differences = _readme_differences()
        assert differences, f"README.md has no bullets under {_README_SECTION!r}"
        bases = {"tcd": _diffusers_tcd.TCDSchedulerTest, "lcm": _diffusers_lcm.LCMSchedulerTest,
                 "ddim": _diffusers_ddim.DDIMSchedulerTest, "euler": _diffusers_euler.EulerDiscreteSchedulerTest,
                 "euler_ancestral": _diffusers_euler_ancestral.EulerAncestralDiscreteSchedulerTest}
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
        assert TestDiffusersDDIMSuite.scheduler_classes == (DDIMScheduler,)
        assert len(names(TestDiffusersDDIMSuite)) == len(names(_diffusers_ddim.DDIMSchedulerTest)) == 28
        if _EULER_IMPORT_ERROR is None:
            assert TestDiffusersEulerSuite.scheduler_classes == (EulerDiscreteScheduler,)
            assert TestDiffusersEulerAncestralSuite.scheduler_classes == (EulerAncestralDiscreteScheduler,)
            for ours, theirs, count in ((TestDiffusersEulerSuite, _diffusers_euler.EulerDiscreteSchedulerTest, 26),
                                        (TestDiffusersEulerAncestralSuite,
                                         _diffusers_euler_ancestral.EulerAncestralDiscreteSchedulerTest, 19)):
                assert len(names(ours)) == len(names(theirs)) == count, ours

else:

    def test_diffusers_scheduler_suite_importable():
        raise _IMPORT_ERROR
