"""The combination pipelines of issue 25 on MindSpore: against fewstep on torch (same fewstep.Generator seed,
the first schedule of each combination: TCD eta 0.3 with CFG, LCM for the LCM classes), and against
mindone's own class of the same name (mindone 0.5 has every one), with the same random numbers."""

import numpy as np
import pytest

import fewstep
from tests.combination_cases import COMBOS, NAMES, call_kwargs, ours, output, reference

pytestmark = [pytest.mark.parity, pytest.mark.torch, pytest.mark.mindspore]

# as tests/test_adapters_mindspore.py: mindone's / MindSpore's models match torch's to ~1e-5 per forward
PARITY_ATOL = 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_mindspore_matches_torch(name):
    combo = COMBOS[name]
    scheduler = combo.schedules[0][0]
    kwargs = call_kwargs(name, 0)
    want = output(ours(name, scheduler, "torch")(generator=fewstep.Generator(5), **kwargs), combo.video)
    got = output(ours(name, scheduler, "mindspore")(generator=fewstep.Generator(5), **kwargs), combo.video)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= PARITY_ATOL, f"{name} {scheduler}: max |torch - mindspore| = {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_mindspore_matches_mindone_pipeline(name):
    """mindone's own class of the same name (mindone 0.5 has every one) with mindone's models, and fewstep on
    MindSpore, on the same call: every random number (VAE samples, initial noise, the scheduler's per-step
    noise) comes from the same np.random.Generator on both sides, which fewstep draws the way mindone does."""
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone is imported (see fewstep/backends/mindspore_cpu.py)
    combo = COMBOS[name]
    scheduler = combo.schedules[0][0]
    ref = reference(name, scheduler, "mindone")
    mine = ours(name, scheduler, "mindspore")
    kwargs = call_kwargs(name, 0)
    got = output(mine(generator=np.random.Generator(np.random.PCG64(3)), **kwargs), combo.video)
    want = np.asarray(ref(generator=np.random.Generator(np.random.PCG64(3)), **kwargs)[0])
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= PARITY_ATOL, f"{name}: max |fewstep - mindone| = {err:.3g}"
