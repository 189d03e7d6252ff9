"""Noise schedules (fewstep.core.schedules) against diffusers' tables, bit for bit.

The NumPy-only tests pin the published reference values; the torch-marked tests compare every table
with what diffusers builds on torch 2.13 CPU.
"""

import numpy as np
import pytest

from fewstep.core import schedules

T_VALUES = (100, 500, 1000)
BETA_RANGES = ((0.00085, 0.012), (0.0001, 0.02))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


# ---------------------------------------------------------------------------------------------
# NumPy only


def test_default_alphas_cumprod_matches_published_values():
    # shared/reference/tcd-lcm.md §1.3, computed with torch; printed to 8 significant digits.
    ac = schedules.alphas_cumprod(schedules.make_betas("scaled_linear", 1000, 0.00085, 0.012))
    expected = {0: 0.99914998, 19: 0.98224396, 39: 0.96289492, 99: 0.89546245, 139: 0.84313983,
                259: 0.65897524, 499: 0.27766943, 759: 0.05221289, 879: 0.017534148, 999: 0.0046600951}
    for t, value in expected.items():
        assert ac[t] == pytest.approx(value, rel=2e-8, abs=0), t
    assert ac.dtype == np.float32 and ac.shape == (1000,)


@pytest.mark.parametrize("schedule", schedules.BETA_SCHEDULES)
def test_zero_terminal_snr_ends_at_exactly_zero(schedule):
    betas = schedules.rescale_zero_terminal_snr(schedules.make_betas(schedule, 1000, 0.00085, 0.012))
    ac = schedules.alphas_cumprod(betas)
    assert betas[-1] == 1.0 and ac[-1] == 0.0
    original = schedules.alphas_cumprod(schedules.make_betas(schedule, 1000, 0.00085, 0.012))
    # Alg. 1 keeps sqrt(alpha_bar_0) fixed, so alpha_bar_0 moves by float32 rounding only.
    assert ac[0] == pytest.approx(original[0], rel=1e-6)
    assert np.all(np.diff(ac) <= 0)


def test_linspace_keeps_both_ends_exact():
    values = schedules.torch_linspace_float32(0.00085**0.5, 0.012**0.5, 1000)
    assert values[0] == np.float32(0.00085**0.5) and values[-1] == np.float32(0.012**0.5)
    assert schedules.torch_linspace_float32(0.1, 0.2, 1).tolist() == [np.float32(0.1)]
    assert len(schedules.torch_linspace_float32(0.1, 0.2, 0)) == 0


def test_trained_betas_override_the_named_schedule():
    betas = schedules.make_betas("not-used", 4, 0.0, 0.0, trained_betas=[0.1, 0.2, 0.3, 0.4])
    assert betas.dtype == np.float32 and betas.tolist() == np.float32([0.1, 0.2, 0.3, 0.4]).tolist()


def test_unknown_beta_schedule_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        schedules.make_betas("cosine", 1000, 0.00085, 0.012)
    for name in schedules.BETA_SCHEDULES:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------------
# Against diffusers (torch)


def _diffusers_tables(**config):
    from diffusers import TCDScheduler

    ref = TCDScheduler(**config)
    return ref.betas.numpy(), ref.alphas_cumprod.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("schedule", schedules.BETA_SCHEDULES)
def test_betas_and_alphas_cumprod_bitwise_equal_to_diffusers(T, schedule):
    for beta_start, beta_end in BETA_RANGES:
        ref_betas, ref_ac = _diffusers_tables(
            num_train_timesteps=T, beta_schedule=schedule, beta_start=beta_start, beta_end=beta_end
        )
        betas = schedules.make_betas(schedule, T, beta_start, beta_end)
        # Bitwise: the same float32 numbers, not merely close (FMA-style linspace, float64 cumprod).
        np.testing.assert_array_equal(_bits(betas), _bits(ref_betas))
        np.testing.assert_array_equal(_bits(schedules.alphas_cumprod(betas)), _bits(ref_ac))


@pytest.mark.torch
@pytest.mark.parametrize("T", T_VALUES)
def test_trained_betas_bitwise_equal_to_diffusers(T):
    rng = np.random.default_rng(T)
    trained = np.sort(rng.uniform(1e-4, 2e-2, T)).tolist()  # Python floats, rounded to float32 by both
    ref_betas, ref_ac = _diffusers_tables(num_train_timesteps=T, trained_betas=trained)
    betas = schedules.make_betas("scaled_linear", T, 0.00085, 0.012, trained_betas=trained)
    np.testing.assert_array_equal(_bits(betas), _bits(ref_betas))
    np.testing.assert_array_equal(_bits(schedules.alphas_cumprod(betas)), _bits(ref_ac))


def _torch_sqrt_is_correctly_rounded() -> bool:
    """torch's float32 sqrt goes through a vectorised math library; on some CPUs (seen on AMD EPYC with
    torch 2.13's MKL build) it is faithful but not correctly rounded (~20% of inputs 1 ulp off), while
    NumPy's sqrt is IEEE. The zero-SNR rescale takes square roots, so bitwise equality there depends on it."""
    import torch

    x = torch.rand(4096, generator=torch.Generator().manual_seed(0))
    return bool(np.array_equal(x.sqrt().numpy(), np.sqrt(x.numpy())))


@pytest.mark.torch
@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("schedule", schedules.BETA_SCHEDULES)
def test_zero_snr_tables_match_diffusers(T, schedule, monkeypatch):
    import torch

    ref_betas, ref_ac = _diffusers_tables(
        num_train_timesteps=T, beta_schedule=schedule, rescale_betas_zero_snr=True, prediction_type="v_prediction"
    )
    base = schedules.make_betas(schedule, T, 0.00085, 0.012)
    betas = schedules.rescale_zero_terminal_snr(base)
    ac = schedules.alphas_cumprod(betas)
    assert ac[-1] == ref_ac[-1] == 0.0
    if _torch_sqrt_is_correctly_rounded():
        np.testing.assert_array_equal(_bits(betas), _bits(ref_betas))
        np.testing.assert_array_equal(_bits(ac), _bits(ref_ac))
    else:
        # This CPU's torch sqrt is off by up to one ulp. 1 - alpha (betas) then cancels digits, so
        # compare alphas_cumprod relatively: measured <= 2.5e-5 for T=100, <= 4e-6 for T=1000.
        np.testing.assert_allclose(ac[:-1], ref_ac[:-1], rtol=5e-5, atol=0)
        np.testing.assert_allclose(betas, ref_betas, rtol=0, atol=1e-5)
    # Everything else is the same arithmetic in the same order: with torch's square roots substituted
    # for NumPy's, the tables are bitwise equal on any CPU.
    np_module = schedules.np

    class _TorchSqrt:
        def __getattr__(self, name):
            return getattr(np_module, name)

        @staticmethod
        def sqrt(x):
            x = np.asarray(x)
            return torch.from_numpy(np.array(x, ndmin=1)).sqrt().numpy().reshape(x.shape)

    monkeypatch.setattr(schedules, "np", _TorchSqrt())
    betas_t = schedules.rescale_zero_terminal_snr(base)
    monkeypatch.undo()
    np.testing.assert_array_equal(_bits(betas_t), _bits(ref_betas))
    np.testing.assert_array_equal(_bits(schedules.alphas_cumprod(betas_t)), _bits(ref_ac))
