"""Bad input raises ValueError with a message that names the fix, and a failed set_timesteps leaves
the scheduler exactly as it was. NumPy only, except the mixed-framework case."""

import numpy as np
import pytest

import fewstep
from fewstep.core.schedulers.lcm import lcm_step
from fewstep.core.schedulers.tcd import tcd_step

SCHEDULERS = (fewstep.TCDScheduler, fewstep.LCMScheduler)


def _state(scheduler):
    return (
        scheduler.timesteps.tolist(),
        scheduler.num_inference_steps,
        scheduler.custom_timesteps,
        scheduler.step_index,
        scheduler.begin_index,
    )


def _x():
    return np.ones((1, 4, 8, 8), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_unknown_beta_schedule(cls):
    with pytest.raises(ValueError, match="'linear', 'scaled_linear', 'squaredcos_cap_v2'"):
        cls(beta_schedule="cosine")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_unknown_prediction_type_is_refused_at_construction(cls):
    with pytest.raises(ValueError, match="'epsilon', 'sample', 'v_prediction'"):
        cls(prediction_type="flow")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_zero_snr_with_epsilon_prediction_is_refused(cls):
    # diffusers builds it and returns NaN at t = T-1; the message says what to use instead.
    with pytest.raises(ValueError, match="v_prediction"):
        cls(rescale_betas_zero_snr=True)
    cls(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    cls(rescale_betas_zero_snr=True, prediction_type="sample")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_trained_betas_shorter_than_the_schedule(cls):
    # Accepted as diffusers accepts them (its own test_trained_betas builds 1000 training timesteps from 2
    # betas); a schedule that reaches past them is refused at set_timesteps, where diffusers' step would
    # index past its table, and the scheduler is left as it was.
    scheduler = cls(trained_betas=[0.1, 0.2, 0.3])
    np.testing.assert_array_equal(scheduler.betas, np.float32([0.1, 0.2, 0.3]))
    assert len(scheduler.alphas_cumprod) == 3 and len(scheduler) == 1000
    before = _state(scheduler)
    with pytest.raises(ValueError) as err:
        scheduler.set_timesteps(4)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("This schedule reaches timestep 999 but trained_betas has only 3 values")
    assert "num_train_timesteps=3" in message
    assert _state(scheduler) == before
    with pytest.raises(ValueError, match=r"must lie in 0\.\.2"):
        scheduler.add_noise(_x(), _x(), np.array([5]))
    cls(trained_betas=[0.1, 0.2, 0.3], num_train_timesteps=3).set_timesteps(2, original_inference_steps=3)


# ---------------------------------------------------------------------------------------------
# set_timesteps: every error leaves the state unchanged


BAD_SET_TIMESTEPS = [
    (dict(), "exactly one of"),
    (dict(num_inference_steps=4, timesteps=[999, 499]), "exactly one of"),
    (dict(num_inference_steps=0), "at least 1"),
    (dict(num_inference_steps=2.5), "integer"),
    (dict(num_inference_steps=51), "num_inference_steps <= 50"),
    (dict(num_inference_steps=1001), "num_train_timesteps=1000"),
    (dict(num_inference_steps=30, strength=0.5), r"int\(50 \* 0.5\) = 25"),
    (dict(num_inference_steps=29, strength=0.58), r"raise strength to at least 0.581"),  # int(50*0.58) == 28
    (dict(num_inference_steps=4, strength=0.0), r"\(0, 1\]"),
    (dict(num_inference_steps=4, strength=1.5), r"\(0, 1\]"),
    (dict(num_inference_steps=4, strength=-0.5), r"\(0, 1\]"),
    (dict(num_inference_steps=4, strength=float("nan")), r"\(0, 1\]"),
    (dict(num_inference_steps=4, original_inference_steps=0), "at least 1"),
    (dict(timesteps=[999, 499, 499]), "strictly descending"),
    (dict(timesteps=[499, 999]), "strictly descending"),
    (dict(timesteps=[1000, 499]), "below num_train_timesteps=1000"),
    (dict(timesteps=[999, 499, -1]), "non-negative"),
    (dict(timesteps=[999, 499.5]), "integer"),
    (dict(timesteps=[]), "empty"),
    (dict(timesteps=[999, 499], strength=0.4), "strength"),  # int(2 * 0.4) == 0 timesteps kept
]


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("kwargs, message", BAD_SET_TIMESTEPS)
def test_bad_set_timesteps_raises_and_changes_nothing(cls, kwargs, message):
    scheduler = cls()
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(2)
    scheduler.step(_x(), int(scheduler.timesteps[2]), _x(), generator=fewstep.Generator(0))
    before = _state(scheduler)
    with pytest.raises(ValueError, match=message):
        scheduler.set_timesteps(**kwargs)
    assert _state(scheduler) == before


def test_original_steps_above_num_train_timesteps():
    scheduler = fewstep.LCMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="cannot exceed num_train_timesteps=100"):
        scheduler.set_timesteps(4, original_inference_steps=200)


def test_tcd_explicit_original_steps_bound_leaves_state_unchanged():
    # diffusers assigns num_inference_steps = 60 before raising here (reference §2); fewstep does not.
    scheduler = fewstep.TCDScheduler()
    scheduler.set_timesteps(4)
    before = _state(scheduler)
    with pytest.raises(ValueError, match="original_inference_steps >= 60"):
        scheduler.set_timesteps(60, original_inference_steps=50)
    assert _state(scheduler) == before and scheduler.num_inference_steps == 4


def test_config_without_original_steps():
    scheduler = fewstep.LCMScheduler(original_inference_steps=None)
    with pytest.raises(ValueError, match="original_inference_steps=50"):
        scheduler.set_timesteps(4)
    scheduler.set_timesteps(4, original_inference_steps=50)


# ---------------------------------------------------------------------------------------------
# step


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_step_before_set_timesteps(cls):
    with pytest.raises(ValueError, match=r"set_timesteps\(num_inference_steps\)"):
        cls().step(_x(), 999, _x())


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_timestep_not_in_schedule_lists_the_schedule(cls):
    scheduler = cls()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"\[999, 759, 499, 259\]") as err:
        scheduler.step(_x(), 500, _x(), generator=fewstep.Generator(0))
    assert "set_begin_index" in str(err.value)
    assert scheduler.step_index is None
    for bad in (1000, -1, 999.5, "999"):
        with pytest.raises(ValueError):
            scheduler.step(_x(), bad, _x(), generator=fewstep.Generator(0))
    assert scheduler.step_index is None


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), None, "0.3", True])
def test_eta_outside_unit_interval(eta):
    scheduler = fewstep.TCDScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"\[0, 1\].*0\.3"):
        scheduler.step(_x(), 999, _x(), eta=eta)
    assert scheduler.step_index is None  # nothing moved
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tcd_step(_x(), 999, _x(), timesteps=[999, 499], step_index=0, alphas_cumprod=scheduler.alphas_cumprod, eta=eta)


def test_prediction_type_changed_after_construction_is_still_checked():
    scheduler = fewstep.TCDScheduler()
    scheduler.register_to_config(prediction_type="flow")
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="'epsilon', 'sample', 'v_prediction'"):
        scheduler.step(_x(), 999, _x(), eta=0.0)


def test_unknown_lcm_option_in_the_stateless_step():
    scheduler = fewstep.LCMScheduler()
    with pytest.raises(ValueError, match="clip_sample"):
        lcm_step(_x(), 999, _x(), timesteps=[999], step_index=0, alphas_cumprod=scheduler.alphas_cumprod, clip=True)


def test_not_a_tensor():
    scheduler = fewstep.TCDScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="NumPy arrays, torch tensors or MindSpore tensors|Cannot tell"):
        scheduler.step([[1.0]], 999, [[1.0]], eta=0.0)
    assert scheduler.step_index is None


@pytest.mark.torch
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_tensors_of_two_frameworks_in_one_step(cls):
    import torch

    scheduler = cls()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="different frameworks"):
        scheduler.step(torch.ones(1, 4, 8, 8), 999, _x())
    assert scheduler.step_index is None
    with pytest.raises(ValueError, match="different frameworks"):
        scheduler.add_noise(_x(), torch.ones(1, 4, 8, 8), 999)


# ---------------------------------------------------------------------------------------------
# other entry points


def test_begin_index_and_add_noise_arguments():
    scheduler = fewstep.TCDScheduler()
    with pytest.raises(ValueError, match="non-negative"):
        scheduler.set_begin_index(-1)
    with pytest.raises(ValueError, match="0..999"):
        scheduler.add_noise(_x(), _x(), 1000)
    with pytest.raises(ValueError, match="empty"):
        scheduler.add_noise(_x(), _x(), [])


def test_from_config_arguments(tmp_path):
    with pytest.raises(ValueError, match="config dict"):
        fewstep.TCDScheduler.from_config(42)
    with pytest.raises(FileNotFoundError, match="snapshot_download"):
        fewstep.TCDScheduler.from_config(str(tmp_path / "missing"))
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON"):
        fewstep.TCDScheduler.from_config(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        fewstep.TCDScheduler().save_config(tmp_path / "scheduler_config.json")


def test_messages_teach_the_num_inference_steps_fix():
    scheduler = fewstep.LCMScheduler()
    with pytest.raises(ValueError) as err:
        scheduler.set_timesteps(8, strength=0.1)  # int(50 * 0.1) = 5 grid points
    message = str(err.value)
    assert "num_inference_steps <= 5" in message and "0.16" in message
    assert int(50 * 0.16) >= 8
