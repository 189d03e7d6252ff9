"""Call options diffusers' pipelines take, taken as diffusers takes them: `guidance_rescale`, `clip_skip` and
`output_type="pt"`, on torch against live diffusers on the same tiny weights and on MindSpore against the torch
backend; each also changes the image where it should (by more than MIN_EFFECT), and bad values fail in one
line before anything runs.

The tiny CLIP text encoders have 2 layers: SD's clip_skip=1 takes hidden_states[-2] through the final layer
norm, SDXL's takes hidden_states[-3] (the embeddings), the most either encoder can skip there.
"""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from tests.pipeline_cases import SIZE

pytestmark = pytest.mark.torch

IMAGE_ATOL = 1e-4  # as tests/test_pipelines_torch.py
MIN_EFFECT = 1e-2
FAMILIES = [("StableDiffusionPipeline", "sd15"), ("StableDiffusionXLPipeline", "sdxl")]
IDS = [kind for _, kind in FAMILIES]
# TCD with eta 0.3 and classifier-free guidance on (guidance_rescale acts only under CFG)
GUIDED = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_inference_steps=4, guidance_scale=3.0,
              eta=0.3, height=SIZE, width=SIZE, output_type="np")


def _pair(class_name, kind):
    from tests.test_pipelines_torch import _pair as pair

    return pair(class_name, kind, "tcd")


def _flat_clip_shim(ref):
    """diffusers reads `text_encoder.text_model.final_layer_norm` for SD's clip_skip; transformers 5's CLIPTextModel
    has no `text_model` level (the norm is at its top), so there diffusers itself fails. The reference then gets
    that attribute, pointing at the same layer norm, set outside torch's module registry."""
    import types

    encoder = getattr(ref, "text_encoder", None)
    if encoder is not None and not hasattr(encoder, "text_model"):
        object.__setattr__(encoder, "text_model", types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm))


def _both(class_name, kind, seed=0, **kwargs):
    import torch

    ours, ref = _pair(class_name, kind)
    _flat_clip_shim(ref)
    got = ours(generator=fewstep.Generator(seed), **kwargs).images
    want = ref(generator=torch.Generator().manual_seed(seed), **kwargs).images
    return got, want


def _close(got, want, what):
    assert got.shape == want.shape, what
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"{what}: max |fewstep - diffusers| = {err:.3g}"


# ------------------------------------------------------------------------------------------------ torch


@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_guidance_rescale_matches_diffusers_and_matters(class_name, kind):
    # a strong guidance scale: the tiny SDXL's text and negative predictions are so alike that at 3.0 the guided
    # prediction's spread barely differs from the text one's (the rescale then moves the image by ~5e-4)
    kwargs = dict(GUIDED, guidance_scale=12.0)
    got, want = _both(class_name, kind, **kwargs, guidance_rescale=0.7)
    _close(got, want, f"{kind} guidance_rescale=0.7")
    plain, _ = _both(class_name, kind, **kwargs, guidance_rescale=0.0)
    assert np.abs(got - plain).max() > MIN_EFFECT


@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_clip_skip_matches_diffusers_and_matters(class_name, kind):
    # Needs conditioning.py to pass args["clip_skip"] to prompts.encode_sd / encode_sdxl.
    got, want = _both(class_name, kind, **GUIDED, clip_skip=1)
    _close(got, want, f"{kind} clip_skip=1")
    plain, _ = _both(class_name, kind, **GUIDED)
    assert np.abs(got - plain).max() > MIN_EFFECT


@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_clip_skip_embeddings_equal_diffusers_encode_prompt(class_name, kind):
    """prompts.encode_sd / encode_sdxl with clip_skip against diffusers' encode_prompt (positives only:
    diffusers encodes negative prompts without clip_skip)."""
    import torch

    from fewstep.pipelines import prompts

    ours, ref = _pair(class_name, kind)
    _flat_clip_shim(ref)
    texts = ["a red fox in the snow"]
    for clip_skip in (None, 1):
        if kind == "sdxl":
            got, pooled = prompts.encode_sdxl(ours.ops, (ours.tokenizer, ours.tokenizer_2),
                                              (ours.text_encoder, ours.text_encoder_2), texts, "float32",
                                              clip_skip=clip_skip)
            want, _, want_pooled, _ = ref.encode_prompt(texts[0], do_classifier_free_guidance=False, clip_skip=clip_skip)
            torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=1e-6)
        else:
            got = prompts.encode_sd(ours.ops, ours.tokenizer, ours.text_encoder, texts, "float32", clip_skip=clip_skip)
            want, _ = ref.encode_prompt(texts[0], "cpu", 1, False, clip_skip=clip_skip)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    skipped = prompts.encode_sd(ours.ops, ours.tokenizer, ours.text_encoder, texts, "float32", clip_skip=1) \
        if kind == "sd15" else got
    plain = prompts.encode_sd(ours.ops, ours.tokenizer, ours.text_encoder, texts, "float32") \
        if kind == "sd15" else prompts.encode_sdxl(ours.ops, (ours.tokenizer, ours.tokenizer_2),
                                                   (ours.text_encoder, ours.text_encoder_2), texts, "float32")[0]
    assert float((skipped - plain).abs().max()) > MIN_EFFECT


@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_output_type_pt_is_diffusers_tensor_and_the_np_output(class_name, kind):
    import torch

    kwargs = dict(GUIDED, output_type="pt")
    got, want = _both(class_name, kind, **kwargs)
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype == torch.float32
    assert tuple(got.shape) == tuple(want.shape) == (1, 3, SIZE, SIZE)
    assert got.device == want.device
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    _close(got.numpy(), want.numpy(), f"{kind} output_type='pt'")
    ours, _ = _pair(class_name, kind)
    as_np = ours(generator=fewstep.Generator(0), **GUIDED).images
    np.testing.assert_array_equal(got.numpy().transpose(0, 2, 3, 1), as_np)


def test_video_output_type_pt_is_diffusers_tensor():
    """AnimateDiff: (videos, frames, channels, height, width) float32, as diffusers' postprocess_video("pt")."""
    import torch

    from tests.test_animatediff import both, call

    got, want = both("tcd", {**call("tcd", 0.3, 0.0, 4), "output_type": "pt"})
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype == torch.float32
    assert tuple(got.shape) == tuple(want.shape) == (1, 4, 3, SIZE, SIZE)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    _close(got.numpy(), want.numpy(), "AnimateDiff output_type='pt'")
    as_np, _ = both("tcd", call("tcd", 0.3, 0.0, 4))
    np.testing.assert_array_equal(got.numpy().transpose(0, 1, 3, 4, 2), as_np)


BAD = [
    (dict(guidance_rescale=-0.1), "guidance_rescale must be 0 or more; got -0.1."),
    (dict(guidance_rescale=float("nan")), "guidance_rescale must be a finite number; got nan."),
    (dict(guidance_rescale="0.7"), "guidance_rescale must be a number; got '0.7'."),
    (dict(clip_skip=-1), "clip_skip must be from 0 to"),
    (dict(clip_skip=1.5), "clip_skip must be a whole number; got 1.5."),
    (dict(clip_skip=True), "clip_skip must be a whole number; got True."),
    (dict(output_type="tensor"), "Unknown output_type 'tensor'; use 'pil', 'np', 'pt' or 'latent'."),
]
# more layers than the tiny encoders have (2): SD skips at most 2, SDXL (which starts from the penultimate) 1
TOO_DEEP = [("StableDiffusionPipeline", "sd15", 3, "clip_skip must be from 0 to 2; got 3."),
            ("StableDiffusionXLPipeline", "sdxl", 2, "clip_skip must be from 0 to 1; got 2.")]


def _spy_models(monkeypatch, pipe):
    """Record every call of the UNet, the VAE decoder and the text encoders: a bad value must stop before them."""
    calls = []
    for name in ("unet", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is None:
            continue
        cls = type(getattr(pipe, name))
        original = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k))
    return calls


@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_bad_values_fail_in_one_line_before_anything_runs(monkeypatch, class_name, kind):
    ours, _ = _pair(class_name, kind)
    calls = _spy_models(monkeypatch, ours)
    before = ours.scheduler.timesteps.tolist()
    cases = BAD + [(dict(clip_skip=n), msg) for c, k, n, msg in TOO_DEEP if k == kind]
    for bad, message in cases:
        with pytest.raises(ValueError) as err:
            ours(generator=fewstep.Generator(0), **{**GUIDED, **bad})
        text = str(err.value)
        assert "\n" not in text and text.startswith(message), (bad, text)
    assert calls == []
    assert ours.scheduler.timesteps.tolist() == before


def test_lcm_pipeline_takes_no_guidance_rescale():
    """diffusers' LatentConsistencyModelPipeline has no guidance_rescale (it never runs classifier-free guidance)."""
    lcm = pipelines.LatentConsistencyModelPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['guidance_rescale'\]"):
        lcm("a cat", guidance_rescale=0.7, num_inference_steps=1)


def test_trained_betas_as_diffusers_takes_them():
    """diffusers keeps trained_betas of another length than num_train_timesteps; so does fewstep, with the same
    tables, and refuses a schedule reaching past them where diffusers' step would index past its table."""
    import diffusers
    import torch

    for ours_cls, ref_cls in ((fewstep.TCDScheduler, diffusers.TCDScheduler),
                              (fewstep.LCMScheduler, diffusers.LCMScheduler)):
        ours, ref = ours_cls(trained_betas=np.array([0.1, 0.3])), ref_cls(trained_betas=np.array([0.1, 0.3]))
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
        assert len(ours) == len(ref) == 1000
        ref.set_timesteps(2)
        with pytest.raises(IndexError):  # what diffusers does at the first step
            ref.step(torch.zeros(1, 1, 2, 2), int(ref.timesteps[0]), torch.zeros(1, 1, 2, 2))
        with pytest.raises(ValueError, match="^This schedule reaches timestep 999 but trained_betas has only 2 values"):
            ours.set_timesteps(2)


# ------------------------------------------------------------------------------------------------ MindSpore

MS_PARITY_ATOL = 1e-4  # as tests/test_pipelines_mindspore.py


def _ms_pipes(class_name, kind):
    from tests.test_pipelines_mindspore import _pipe

    return {b: _pipe(class_name, kind, b, "tcd") for b in ("torch", "mindspore")}


@pytest.mark.mindspore
@pytest.mark.parity
@pytest.mark.parametrize("class_name,kind", FAMILIES, ids=IDS)
def test_mindspore_matches_torch(class_name, kind):
    import mindspore as ms
    import torch

    pipes = _ms_pipes(class_name, kind)
    # clip_skip needs conditioning.py to pass args["clip_skip"] on (see test_clip_skip_matches_diffusers_and_matters)
    for options in (dict(guidance_rescale=0.7), dict(clip_skip=1), dict(output_type="pt")):
        kwargs = {**GUIDED, **options, "guidance_scale": 12.0 if "guidance_rescale" in options else 3.0}
        out = {b: pipe(generator=fewstep.Generator(5), **kwargs).images for b, pipe in pipes.items()}
        if options.get("output_type") == "pt":
            assert isinstance(out["mindspore"], ms.Tensor) and isinstance(out["torch"], torch.Tensor)
            assert out["mindspore"].dtype == ms.float32 and tuple(out["mindspore"].shape) == (1, 3, SIZE, SIZE)
            out = {"torch": out["torch"].numpy(), "mindspore": out["mindspore"].asnumpy()}
        err = np.abs(out["torch"] - out["mindspore"]).max()
        assert err <= MS_PARITY_ATOL, f"{kind} {options}: max |torch - mindspore| = {err:.3g}"
