"""Single-file checkpoints (the A1111 / civitai layout): the tiny checkpoints `fewstep.testing.tiny_checkpoint`
writes load on torch and MindSpore through the libraries' own `from_single_file`, with `config=` the tiny folder and
no network, and give the folder's weights and images; the family is read from the header as diffusers decides it;
pickles, unknown layouts, missing or wrong configs get errors that say what to do."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.pipelines import checkpoint_family
from fewstep.pipelines.checkpoint_family import FAMILIES, check_config, checkpoint_tensors, detect_family, family_of
from fewstep.testing import KINDS, ldm_layout, tiny_checkpoint, tiny_controlnet, tiny_pipeline, tiny_t2i_adapter
from tests.pipeline_cases import SIZE, mask, picture

# Building a tiny folder (the checkpoint's source) needs torch; reading headers needs nothing.
needs_tiny = pytest.mark.torch

# (fewstep class, kind, extra call arguments): the three the issue names
LOADS = [("StableDiffusionPipeline", "sd15", {}), ("StableDiffusionXLPipeline", "sdxl", {}),
         ("StableDiffusionInpaintPipeline", "sd15-inpaint", {"image": picture(2), "mask_image": mask()})]
LOAD_IDS = [k for _, k, _ in LOADS]

# The same weights in the same models: the images differ only where diffusers' single-file loader leaves a
# weight as a strided view of the checkpoint's tensor (the VAE's 1x1-conv attention, OpenCLIP's split in_proj),
# which changes the order of float32 sums, not the values; measured 3.6e-7 (SD) / 4.8e-7 (SDXL) on torch, 0 on
# MindSpore. The bound is 1e-6.
FOLDER_ATOL = 1e-6
# fewstep against diffusers' own pipeline, as tests/test_pipelines_torch.py bounds it (scalar vs tensor
# scheduler coefficients, ~10x margin).
DIFFUSERS_ATOL = 1e-4


_loaded = {}


def _pipe(class_name, kind, backend="torch", single_file=True):
    """A pipeline from the tiny checkpoint (with config= its folder) or from the folder itself, cached across tests."""
    key = (class_name, kind, backend, single_file)
    if key not in _loaded:
        cls = getattr(pipelines, class_name)
        _loaded[key] = (cls.from_single_file(tiny_checkpoint(kind), backend=backend, config=tiny_pipeline(kind))
                        if single_file else cls.from_pretrained(tiny_pipeline(kind), backend=backend))
    return _loaded[key]


def _call(pipe, extra, seed=0):
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red fox in the snow", num_inference_steps=2, guidance_scale=0.0, eta=0.3,
                  output_type="np", **extra)
    if not extra:
        kwargs.update(height=SIZE, width=SIZE)
    return pipe(generator=fewstep.Generator(seed), **kwargs).images


def _without_metadata(src: str, dst) -> str:
    from safetensors.numpy import load_file, save_file

    save_file(load_file(src), str(dst))
    return str(dst)


# ------------------------------------------------------------------------------------ family, header only
@needs_tiny
@pytest.mark.parametrize("kind", KINDS)
def test_family_of_every_tiny_checkpoint(kind):
    family = detect_family(tiny_checkpoint(kind))
    assert family.key == kind and family is FAMILIES[kind]
    assert family.pipeline == {"sdxl": "StableDiffusionXLPipeline", "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
                               "sd15-inpaint": "StableDiffusionInpaintPipeline"}.get(kind, "StableDiffusionPipeline")
    # and the config folder it came from agrees
    assert check_config(family, checkpoint_tensors(tiny_checkpoint(kind)), tiny_pipeline(kind)) is family


def _diffusers_type(tensors: dict) -> str:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    # diffusers reads only .shape: zero-stride arrays of the header's shapes, no memory
    return infer_diffusers_model_type({k: np.broadcast_to(np.float32(0), shape) for k, (_, shape) in tensors.items()})


@needs_tiny
@pytest.mark.parametrize("kind", KINDS)
def test_on_tiny_headers_diffusers_size_probes_fall_back(kind):
    """Why fewstep reads the layout: diffusers' probes are sizes and depths of the released models (a 1024-wide
    cross-attention for SD 2, the tenth layer of SDXL's OpenCLIP encoder), so on the tiny checkpoints it sees
    SD 1.x everywhere but where 9 input channels say inpainting, while fewstep names each right
    (test_family_of_every_tiny_checkpoint). At the released sizes both agree: test_full_size_layouts."""
    tensors = checkpoint_tensors(tiny_checkpoint(kind))
    assert _diffusers_type(tensors) == ("inpainting" if kind.endswith("inpaint") else "v1")


class _Shape:
    """A tensor reduced to its shape, for running `ldm_layout` over full-size models without their memory:
    what the layout does to arrays (transpose, 1x1 reshape, concatenation on axis 0) done to shapes."""

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)
        self.ndim = len(self.shape)

    @property
    def T(self):
        return _Shape(self.shape[::-1])

    def __getitem__(self, index):  # only value[:, :, None, None]
        assert index == (slice(None), slice(None), None, None)
        return _Shape(self.shape + (1, 1))

    def __array_function__(self, func, types, args, kwargs):
        assert func is np.concatenate and kwargs.get("axis", 0) == 0
        parts = args[0]
        return _Shape((sum(p.shape[0] for p in parts),) + parts[0].shape[1:])


def _shapes(model) -> dict:
    return {name: _Shape(value.shape) for name, value in model.state_dict().items()}


# The released models' configs (stable-diffusion-v1-5, stable-diffusion-2-1, stable-diffusion-xl-base-1.0)
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               hidden_act="quick_gelu")
_FULL = {
    "sd15": dict(unet=dict(cross_attention_dim=768), text=_CLIP_L),
    "sd21": dict(unet=dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
                 text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                           hidden_act="gelu"), open_clip=True),
    "sdxl": dict(unet=dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                           block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                           transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                           use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                           projection_class_embeddings_input_dim=2816),
                 text=_CLIP_L, text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                           num_attention_heads=20, projection_dim=1280, hidden_act="gelu")),
}
_INPAINT = {"sd15": "sd15-inpaint", "sd21": "sd2-inpaint", "sdxl": "sdxl-inpaint"}


@pytest.mark.torch
@pytest.mark.parametrize("base", sorted(_FULL))
def test_full_size_layouts(base):
    """The released models' parameter names and shapes (built on torch's meta device: no memory), written in the
    original layout by `ldm_layout`: fewstep's family and diffusers' infer_diffusers_model_type agree, for the
    model and its inpainting variant, and diffusers' own converters take every name back to the model's."""
    import diffusers
    import torch
    import transformers
    from diffusers.loaders import single_file_utils as sfu

    spec = _FULL[base]
    vae_config = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**spec["unet"])
        vae = diffusers.AutoencoderKL(**vae_config)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(vocab_size=49408, **spec["text"]))
        text_2 = None
        if "text_2" in spec:
            config_2 = transformers.CLIPTextConfig(vocab_size=49408, **spec["text_2"])
            text_2 = transformers.CLIPTextModelWithProjection(config_2)
    state = ldm_layout.checkpoint(_shapes(unet), dict(unet.config), _shapes(vae), dict(vae.config), _shapes(text),
                                  _shapes(text_2) if text_2 is not None else None,
                                  open_clip=spec.get("open_clip", False))
    header = {name: ("F32", value.shape) for name, value in state.items()}
    inpaint = {**header, "model.diffusion_model.input_blocks.0.0.weight": ("F32", (320, 9, 3, 3))}
    # SD 2.x without metadata: diffusers' 768-v, named as a guess
    for tensors, key in ((header, "sd21-v" if base == "sd21" else base), (inpaint, _INPAINT[base])):
        family = family_of(tensors)
        assert family.key == key and _diffusers_type(tensors) == family.diffusers_type
    assert family_of(header).alternatives == (("sd21",) if base == "sd21" else ())

    meta = {name: torch.empty(value.shape, device="meta") for name, value in state.items()}

    def same(converted: dict, model) -> None:
        want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        if isinstance(model, transformers.PreTrainedModel):  # transformers 5 names CLIPTextModel's without text_model.
            want = ldm_layout.released_clip_names(want)
        assert {k: tuple(v.shape) for k, v in converted.items()} == want

    same(sfu.convert_ldm_unet_checkpoint(meta, dict(unet.config)), unet)
    same(sfu.convert_ldm_vae_checkpoint(meta, dict(vae.config)), vae)
    if text_2 is not None:
        same(sfu.convert_ldm_clip_checkpoint(meta), text)
        same(sfu.convert_open_clip_checkpoint(text_2, meta, prefix="conditioner.embedders.1.model."), text_2)
    elif spec.get("open_clip"):
        same(sfu.convert_open_clip_checkpoint(text, meta, prefix="cond_stage_model.model."), text)
    else:
        same(sfu.convert_ldm_clip_checkpoint(meta), text)


@needs_tiny
def test_sd2_prediction_from_metadata_else_named_ambiguous_and_config_decides(tmp_path):
    bare = _without_metadata(tiny_checkpoint("sd21"), tmp_path / "sd21.safetensors")
    family = detect_family(bare)
    assert family.key == "sd21-v" and family.alternatives == ("sd21",)  # diffusers' choice, named as one
    assert "cannot tell" in family.name and "config=" in family.name
    tensors = checkpoint_tensors(bare)
    assert check_config(family, tensors, tiny_pipeline("sd21")).key == "sd21"
    assert check_config(family, tensors, tiny_pipeline("sd21-v")).key == "sd21-v"
    assert detect_family(tiny_checkpoint("sd21")).key == "sd21"  # modelspec.prediction_type = epsilon


def test_checkpoint_tensors_reads_the_header_only(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": np.zeros((2, 3), np.float16), "b": np.zeros((4,), np.float32)}, str(path))
    assert checkpoint_tensors(path) == {"a": ("F16", (2, 3)), "b": ("F32", (4,))}


# ------------------------------------------------------------------------------------ errors
@needs_tiny
def test_unknown_layouts_get_clear_errors(tmp_path):
    from safetensors.numpy import save_file

    unet = os.path.join(tiny_pipeline("sd15"), "unet", "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError,
                       match=r"not a checkpoint layout fewstep knows.*diffusers' format.*Known layouts: SD 1\.x"):
        detect_family(unet)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 16), np.float32)},
              str(lora))
    with pytest.raises(ValueError, match="looks like a LoRA: load it with pipe.load_lora_weights"):
        pipelines.StableDiffusionPipeline.from_single_file(lora, config=tiny_pipeline("sd15"))
    refiner = tmp_path / "refiner.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 3, 3), np.float32),
               "conditioner.embedders.0.model.ln_final.weight": np.zeros(8, np.float32)}, str(refiner))
    assert detect_family(refiner).key == "sdxl-refiner"  # recognised since issue 26 (tests/test_sdxl_refiner.py)
    not_safetensors = tmp_path / "junk.safetensors"
    not_safetensors.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="cannot be read as a safetensors checkpoint.*not a safetensors file"):
        detect_family(not_safetensors)


class _SideEffect:
    """Unpickling this calls open(path, "w"): the file appearing would show that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "renamed.safetensors"])
def test_pickles_are_refused_and_never_loaded(tmp_path, monkeypatch, name):
    marker = tmp_path / "unpickled"
    ckpt = tmp_path / name
    ckpt.write_bytes(pickle.dumps({"state_dict": _SideEffect(marker)}, protocol=2))
    opened = []
    real_open = open
    monkeypatch.setattr(checkpoint_family, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k),
                        raising=False)
    with pytest.raises(ValueError, match=r"pickled checkpoint; fewstep never unpickles.*safetensors") as err:
        pipelines.StableDiffusionPipeline.from_single_file(ckpt, backend="mindspore", config=str(tmp_path))
    assert "save_file" in str(err.value)  # the message shows how to convert it
    assert not marker.exists()
    if name.endswith(".safetensors"):
        assert opened == [str(ckpt)]  # read 4 bytes, recognised as a pickle, refused
    else:
        assert opened == []  # refused by its name, before a byte was read


@needs_tiny
def test_no_config_and_hub_offline_asks_for_config(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    for kind, family in (("sd15", "SD 1.5"), ("sdxl", "SDXL base")):
        cls = getattr(pipelines, FAMILIES[kind].pipeline)
        with pytest.raises(ValueError, match=rf"This {family} checkpoint.*no config= was given.*HF_HUB_OFFLINE is "
                                             rf"set.*Pass config=PATH, a local diffusers-format pipeline folder of "
                                             rf"the same family \({family}\)"):
            cls.from_single_file(tiny_checkpoint(kind), backend="mindspore")


@needs_tiny
def test_wrong_config_folder_and_wrong_class_are_refused():
    with pytest.raises(ValueError, match=r"does not describe this SD 1\.5 checkpoint: the folder is SDXL"):
        pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sd15"), config=tiny_pipeline("sdxl"))
    with pytest.raises(ValueError, match=r"the folder is SD 1\.x with a UNet of 4 input channels.*checkpoint SD 1\.x "
                                         r"with 9 input channels"):
        pipelines.StableDiffusionInpaintPipeline.from_single_file(tiny_checkpoint("sd15-inpaint"),
                                                                  config=tiny_pipeline("sd15"))
    with pytest.raises(ValueError, match=r"has no model_index\.json"):
        pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sd15"),
                                                           config=os.path.join(tiny_pipeline("sd15"), "unet"))
    with pytest.raises(ValueError,
                       match=r"is SDXL base; StableDiffusionPipeline cannot run it.*StableDiffusionXLPipeline"):
        pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sdxl"), config=tiny_pipeline("sdxl"))
    with pytest.raises(ValueError, match=r"is SD 1\.5 inpainting; StableDiffusionImg2ImgPipeline cannot run it"):
        pipelines.StableDiffusionImg2ImgPipeline.from_single_file(tiny_checkpoint("sd15-inpaint"))
    with pytest.raises(ValueError, match=r"needs \['controlnet'\], which a checkpoint does not hold"):
        pipelines.StableDiffusionControlNetPipeline.from_single_file(tiny_checkpoint("sd15"),
                                                                     config=tiny_pipeline("sd15"))


def test_from_single_file_is_documented():
    from tests.test_docstrings import _expected, problems

    classes = [c for c in pipelines.factory.CLASSES.values()
               if issubclass(c, pipelines.single_file.FromSingleFileMixin)]
    # SD and SDXL: text-to-image, img2img, inpainting, each plain and with a ControlNet (as diffusers)
    assert len(classes) == 12
    function, arguments, var_keyword = _expected(classes[0], "from_single_file")
    assert problems(function.__qualname__, function.__doc__, arguments, var_keyword) == []


# ------------------------------------------------------------------------------------ torch
@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_torch_loads_the_folders_weights(kind):
    """Every tiny kind: each model holds exactly the folder's tensors (the reverse mapping is right)."""
    import torch

    cls = getattr(pipelines, FAMILIES[kind].pipeline)
    ours, ref = _pipe(cls.__name__, kind), _pipe(cls.__name__, kind, single_file=False)
    assert ours.checkpoint_family.key == kind
    for name in cls.component_names():
        if name.startswith("tokenizer"):
            assert getattr(ours, name).get_vocab() == getattr(ref, name).get_vocab()
            continue
        got, want = getattr(ours, name).module.state_dict(), getattr(ref, name).module.state_dict()
        assert sorted(got) == sorted(want), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert ours.scheduler.config == ref.scheduler.config


@pytest.mark.torch
@pytest.mark.parametrize("class_name,kind,extra", LOADS, ids=LOAD_IDS)
def test_torch_image_matches_the_folder(class_name, kind, extra):
    got = _call(_pipe(class_name, kind), extra)
    want = _call(_pipe(class_name, kind, single_file=False), extra)
    assert np.abs(got - want).max() <= FOLDER_ATOL


@pytest.mark.torch
def test_torch_image_matches_diffusers_from_single_file():
    """Differential: diffusers' own pipeline from the same checkpoint, TCD, same seed."""
    import diffusers
    import torch

    path, folder = tiny_checkpoint("sd15"), tiny_pipeline("sd15")
    ref = diffusers.StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                             safety_checker=None, requires_safety_checker=False)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red fox in the snow", num_inference_steps=2, guidance_scale=3.0, negative_prompt="blurry",
                  eta=0.3, output_type="np", height=SIZE, width=SIZE)
    want = ref(generator=torch.Generator().manual_seed(7), **kwargs).images
    ours = _pipe("StableDiffusionPipeline", "sd15")
    ours.set_progress_bar_config(disable=True)
    got = ours(generator=fewstep.Generator(7), **kwargs).images
    assert np.abs(got - want).max() <= DIFFUSERS_ATOL


@pytest.mark.torch
@pytest.mark.parametrize("class_name,kind", [("StableDiffusionControlNetPipeline", "sd15"),
                                             ("StableDiffusionXLControlNetPipeline", "sdxl")])
def test_torch_controlnet_pipeline_from_single_file(class_name, kind):
    control = pipelines.ControlNetModel.from_pretrained(tiny_controlnet(kind))
    cls = getattr(pipelines, class_name)
    extra = {"image": picture(5), "height": SIZE, "width": SIZE}
    got = _call(cls.from_single_file(tiny_checkpoint(kind), config=tiny_pipeline(kind), controlnet=control), extra)
    # the folder's pipeline of the same family, with the same ControlNet object
    want = _call(cls.from_pipe(_pipe(FAMILIES[kind].pipeline, kind, single_file=False), controlnet=control), extra)
    assert np.abs(got - want).max() <= FOLDER_ATOL


@pytest.mark.torch
def test_torch_dtype_is_the_folders():
    """torch_dtype= (as dtype=) loads every model in that dtype, with the weights from_pretrained gives in it."""
    import torch

    ours = pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sd15"), config=tiny_pipeline("sd15"),
                                                             torch_dtype=torch.float16)  # diffusers' keyword
    ref = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), dtype="float16")
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(ours, name).dtype == "float16"
        got, want = getattr(ours, name).module.state_dict(), getattr(ref, name).module.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name


@pytest.mark.torch
def test_checkpoint_without_vae_needs_one_passed(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in load_file(tiny_checkpoint("sd15")).items() if not k.startswith("first_stage_model.")},
              str(path))
    with pytest.raises(ValueError,
                       match=r"holds no vae \(no key starts with first_stage_model\. or vae\.\).*pass it as vae="):
        pipelines.StableDiffusionPipeline.from_single_file(path, config=tiny_pipeline("sd15"))
    folder_pipe = _pipe("StableDiffusionPipeline", "sd15", single_file=False)
    ours = pipelines.StableDiffusionPipeline.from_single_file(path, config=tiny_pipeline("sd15"), vae=folder_pipe.vae)
    assert ours.vae is folder_pipe.vae
    assert np.abs(_call(ours, {}) - _call(folder_pipe, {})).max() <= FOLDER_ATOL


@pytest.mark.torch
def test_hub_id_config_offline_is_refused_with_the_family(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"config='someone/sd15-configs' is neither a local folder nor a hub repository"
                                         r".*same family \(SD 1\.5\)"):
        pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sd15"), config="someone/sd15-configs")


# ------------------------------------------------------------------------------------ MindSpore
@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("class_name,kind,extra", LOADS, ids=LOAD_IDS)
def test_mindspore_image_matches_the_folder(class_name, kind, extra):
    from mindspore import nn

    ours = _pipe(class_name, kind, "mindspore")
    assert ours.checkpoint_family.key == kind and ours.ops.name == "mindspore"
    assert not hasattr(nn.Embedding, "weight")  # the load-time alias (backends/single_file.py) is gone
    got = _call(ours, extra)
    want = _call(_pipe(class_name, kind, "mindspore", single_file=False), extra)
    assert np.abs(got - want).max() <= FOLDER_ATOL


@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("kind", KINDS)
def test_mindspore_loads_the_folders_weights(kind):
    """Every tiny kind through mindone's converter (OpenCLIP included): each parameter equals mindone's load of
    the folder."""
    cls = getattr(pipelines, FAMILIES[kind].pipeline)
    ours, ref = _pipe(cls.__name__, kind, "mindspore"), _pipe(cls.__name__, kind, "mindspore", single_file=False)
    assert ours.checkpoint_family.key == kind
    for name in (n for n in cls.component_names() if not n.startswith("tokenizer")):
        got = {p.name: p.asnumpy() for p in getattr(ours, name).module.get_parameters()}
        want = {p.name: p.asnumpy() for p in getattr(ref, name).module.get_parameters()}
        assert sorted(got) == sorted(want), name
        assert all(np.array_equal(got[k], want[k]) for k in want), name


@pytest.mark.torch
@pytest.mark.mindspore
def test_mindspore_and_torch_single_file_agree():
    """The point of the project, for checkpoints: one file, one seed, the same image on both frameworks
    (the bound of tests/test_pipelines_mindspore.py: mindone's kernels differ from torch's by ~1e-6)."""
    images = [_call(_pipe("StableDiffusionPipeline", "sd15", b), {}) for b in ("torch", "mindspore")]
    assert np.abs(images[0] - images[1]).max() <= 1e-4


@pytest.mark.torch
def test_checkpoint_cache_is_reused_and_a_user_folder_is_not_overwritten(tmp_path):
    first = tiny_checkpoint("sd15", path=tmp_path / "ckpt")
    stamp = os.stat(first).st_mtime_ns
    assert tiny_checkpoint("sd15", path=tmp_path / "ckpt") == first and os.stat(first).st_mtime_ns == stamp
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a fewstep tiny single-file checkpoint"):
        tiny_checkpoint("sd15", path=tmp_path / "mine")
    shutil.rmtree(tmp_path / "ckpt")


# ------------------------------------------------------------------------------------ the class from the family
@needs_tiny
@pytest.mark.parametrize("class_name,kind,extra", LOADS, ids=LOAD_IDS)
def test_diffusion_pipeline_from_single_file_picks_the_familys_class(class_name, kind, extra):
    """As DiffusionPipeline.from_pretrained picks the class from model_index.json, from_single_file picks it from
    the checkpoint's family, through the class's own from_single_file: the same image."""
    pipe = pipelines.DiffusionPipeline.from_single_file(tiny_checkpoint(kind), config=tiny_pipeline(kind))
    assert type(pipe).__name__ == class_name and pipe.checkpoint_family.key == kind
    np.testing.assert_array_equal(_call(pipe, extra), _call(_pipe(class_name, kind), extra))


@needs_tiny
def test_auto_pipelines_from_single_file_pick_the_task_and_the_adapter():
    from fewstep.pipelines.factory import pipeline_class

    sd15, config = tiny_checkpoint("sd15"), tiny_pipeline("sd15")
    pipe = pipelines.AutoPipelineForImage2Image.from_single_file(sd15, config=config)
    assert type(pipe) is pipelines.StableDiffusionImg2ImgPipeline and pipe.checkpoint_family.key == "sd15"
    control = pipelines.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    pipe = pipelines.DiffusionPipeline.from_single_file(sd15, config=config, controlnet=control)
    assert type(pipe) is pipelines.StableDiffusionControlNetPipeline and pipe.controlnet is control
    # controlnet=None only drops the adapter from the choice, as in from_pretrained
    pipe = pipelines.AutoPipelineForText2Image.from_single_file(sd15, config=config, controlnet=None)
    assert type(pipe) is pipelines.StableDiffusionPipeline
    # the lookup itself, public: family key or class name, task, components
    assert pipeline_class("sdxl-inpaint") is pipelines.StableDiffusionXLInpaintPipeline
    assert pipeline_class("sdxl", "text2img", {"controlnet": control}) is pipelines.StableDiffusionXLControlNetPipeline
    assert pipeline_class("StableDiffusionXLControlNetPipeline", "img2img",
                          {"controlnet": None}) is pipelines.StableDiffusionXLImg2ImgPipeline
    assert pipeline_class("LatentConsistencyModelPipeline", "inpaint") is pipelines.StableDiffusionInpaintPipeline
    with pytest.raises(ValueError, match=r"Unknown task 'text2image'; use one of text2img, img2img, inpaint"):
        pipeline_class("sd15", "text2image")
    # an inpainting checkpoint with a ControlNet is diffusers' StableDiffusionControlNetInpaintPipeline (issue 25;
    # before it, this combination was refused)
    from fewstep.pipelines.factory import single_file_class

    family, cls = single_file_class(tiny_checkpoint("sd15-inpaint"), None, {"controlnet": control})
    assert family.key == "sd15-inpaint" and cls is pipelines.StableDiffusionControlNetInpaintPipeline
    with pytest.raises(ValueError, match=r"no inpaint pipeline for SD with adapter \("):
        pipeline_class("sd15-inpaint", None, {"adapter": control})


@needs_tiny
def test_classes_that_cannot_load_a_checkpoint_say_how():
    with pytest.raises(ValueError, match=r"StableDiffusionAdapterPipeline does not load single-file checkpoints.*"
                                         r"DiffusionPipeline\.from_single_file.*from_pipe"):
        pipelines.StableDiffusionAdapterPipeline.from_single_file(tiny_checkpoint("sd15"))
    adapter = pipelines.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15"))
    with pytest.raises(ValueError, match=r"StableDiffusionAdapterPipeline does not load single-file checkpoints.*"
                                         r"StableDiffusionPipeline\.from_single_file.*from_pipe"):
        pipelines.AutoPipelineForText2Image.from_single_file(tiny_checkpoint("sd15"), adapter=adapter)
    with pytest.raises(ValueError, match="pickled checkpoint"):
        pipelines.DiffusionPipeline.from_single_file("model.ckpt")


def test_the_choosing_from_single_files_are_documented():
    from tests.test_docstrings import _expected, problems

    for cls in (pipelines.DiffusionPipeline, pipelines.AutoPipelineForText2Image):
        function, arguments, var_keyword = _expected(cls, "from_single_file")
        assert problems(function.__qualname__, function.__doc__, arguments, var_keyword) == []
    import inspect

    from fewstep.pipelines.factory import pipeline_class

    arguments = {n: p.default for n, p in inspect.signature(pipeline_class).parameters.items()}
    assert problems("pipeline_class", pipeline_class.__doc__, arguments, None) == []


def config_with_image_encoder(tmp_path) -> str:
    """The tiny SD 1.5 folder plus an image encoder listed in model_index.json, as diffusers' save_pretrained
    writes a pipeline after load_ip_adapter."""
    import json

    from fewstep.testing.tiny_ip_adapter import tiny_ip_adapter

    config = tmp_path / "with-image-encoder"
    shutil.copytree(tiny_pipeline("sd15"), config)
    shutil.copytree(os.path.join(tiny_ip_adapter("sd15"), "models", "image_encoder"), config / "image_encoder")
    index = json.loads((config / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    (config / "model_index.json").write_text(json.dumps(index))
    return str(config)


@needs_tiny
@pytest.mark.parametrize("backend", ["torch", pytest.param("mindspore", marks=pytest.mark.mindspore)])
def test_a_config_folder_with_an_image_encoder_is_read_for_its_configs_only(tmp_path, backend):
    """The libraries would load every component the config lists and fail on the image encoder (they look for a
    transformers model's weights under diffusers' file names): fewstep asks only for the components it uses."""
    pipe = pipelines.StableDiffusionPipeline.from_single_file(tiny_checkpoint("sd15"), backend=backend,
                                                             config=config_with_image_encoder(tmp_path))
    want = _pipe("StableDiffusionPipeline", "sd15", backend)
    np.testing.assert_array_equal(_call(pipe, {}), _call(want, {}))
