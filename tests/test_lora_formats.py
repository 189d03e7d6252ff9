"""LoRA files in every format -> the same normalised factors; SGM names; the reader; bad files.

Core only (NumPy): the model's module list is read from the tiny pipeline folders' own safetensors
files, so these run without a framework. The SGM cross-check against diffusers' converter needs
diffusers and is marked torch.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from fewstep.core.lora import LoraError, normalise, read_lora, read_safetensors
from fewstep.core.lora.sgm import sgm_paths
from fewstep.testing import tiny_pipeline
from tests.lora_cases import FORMATS, make_lora, old_diffusers_file, sgm_name, targets_from_folder, write

KINDS = ("sd15", "sdxl")
_cache = {}


def model(kind):
    """(targets, unet config, synthetic LoRA) of a tiny pipeline kind, cached."""
    if kind not in _cache:
        folder = tiny_pipeline(kind)
        targets = targets_from_folder(folder)
        with open(os.path.join(folder, "unet", "config.json")) as f:
            config = json.load(f)
        _cache[kind] = (targets, config, make_lora(targets, seed=0))
    return _cache[kind]


def load(path_or_dict, kind):
    targets, config, _ = model(kind)
    source = read_lora(path_or_dict)
    return normalise(source.tensors, targets, unet_config=config, metadata=source.metadata, origin=source.origin)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_format_gives_the_same_factors(tmp_path, kind, fmt):
    _, _, layers = model(kind)
    got = load(write(str(tmp_path), fmt, layers, fmt, kind), kind)
    assert sorted(got) == sorted(layers)
    for component, paths in layers.items():
        assert sorted(got[component]) == sorted(paths), component
        for path, (down, up, alpha) in paths.items():
            layer = got[component][path]
            np.testing.assert_array_equal(layer.down, down)
            np.testing.assert_array_equal(layer.up, up)
            assert layer.alpha == alpha, (fmt, path)


def test_lora_covers_what_tcd_and_lcm_loras_touch():
    _, _, layers = model("sdxl")
    paths = list(layers["unet"])
    for needle in ("attn1.to_q", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1",
                   "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv",
                   "time_embedding.linear_1", "add_embedding.linear_2"):
        assert any(p.endswith(needle) for p in paths), needle
    kernels = {layers["unet"][p][0].shape[2:] for p in paths if layers["unet"][p][0].ndim == 4}
    assert kernels == {(1, 1), (3, 3)}  # conv LoRA of both kinds
    assert len(layers["text_encoder"]) == len(layers["text_encoder_2"]) == 12


def test_older_variants_unprefixed_unet_peft_adapter_names_and_default_alpha():
    """A UNet-only file without component prefix and without alphas (diffusers' save_attn_procs),
    PEFT keys carrying an adapter name, and PEFT's own `base_model.model.` prefix."""
    _, _, layers = model("sd15")
    unet = {"unet": dict(list(layers["unet"].items())[:6])}
    bare = {k[len("unet."):]: v for k, v in old_diffusers_file(unet, alphas=False).items()}
    got = load(bare, "sd15")["unet"]
    assert sorted(got) == sorted(unet["unet"])
    assert all(layer.alpha == layer.rank for layer in got.values())  # no alpha: scale 1
    named = {}
    for path, (down, up, _) in unet["unet"].items():
        named[f"base_model.model.{path}.lora_A.default_0.weight"] = down
        named[f"base_model.model.{path}.lora_B.default_0.weight"] = up
    assert sorted(load(named, "sd15")["unet"]) == sorted(unet["unet"])


@pytest.mark.parametrize("kind", KINDS)
def test_sgm_names_follow_the_block_layout(kind):
    targets, config, _ = model(kind)
    mapping = sgm_paths(config, targets["unet"])
    expected = {}
    for path in targets["unet"]:
        try:
            expected[sgm_name(path, kind)] = path
        except KeyError:  # a module the hand-made tables leave out (the attentions' inner names are shared)
            continue
    assert expected and all(mapping[name] == path for name, path in expected.items())
    assert len(set(mapping.values())) == len(mapping)  # one SGM name per module


@pytest.mark.torch
def test_sgm_names_agree_with_diffusers_converter():
    """diffusers' own kohya-SGM conversion (right for SDXL-like layouts) lands on the same modules for
    every block module (it has no rule for conv_in, time_embed, label_emb and out)."""
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    targets, config, layers = model("sdxl")
    mapping = sgm_paths(config, layers["unet"])
    blocks = {s: p for s, p in mapping.items() if s.split(".")[0] in ("input_blocks", "middle_block", "output_blocks")
              and s != "input_blocks.0.0"}
    state = {}
    for sgm in blocks:
        for part in ("lora_down", "lora_up"):
            state[f"lora_unet_{sgm.replace('.', '_')}.{part}.weight"] = np.zeros(1)
    state = _maybe_map_sgm_blocks_to_diffusers(state, types.SimpleNamespace(**config))
    state, _ = _convert_non_diffusers_lora_to_diffusers(state)
    theirs = {k[len("unet."):-len(".lora_A.weight")] for k in convert_unet_state_dict_to_peft(state)
              if k.endswith(".lora_A.weight")}
    assert theirs == set(blocks.values())


# ----------------------------------------------------------------------------------- the reader
@pytest.mark.torch
def test_reader_widens_bfloat16_exactly(tmp_path):
    import safetensors.torch
    import torch

    values = {"a": torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).bfloat16(),
              "b": torch.randn(3, dtype=torch.float16), "c": torch.tensor(4.0)}
    path = str(tmp_path / "bf16.safetensors")
    safetensors.torch.save_file(values, path, metadata={"k": "v"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"format": "pt", "k": "v"} or metadata.get("k") == "v"
    for name, value in values.items():
        np.testing.assert_array_equal(tensors[name], value.float().numpy() if name == "a" else value.numpy())
    assert tensors["a"].dtype == np.float32 and tensors["c"].shape == ()


def test_reader_names_truncated_corrupt_and_pickled_files(tmp_path):
    _, _, layers = model("sd15")
    good = write(str(tmp_path), "good", layers, "kohya", "sd15")
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(LoraError, match=r"truncated\.safetensors is truncated: tensor '.+'"):
        read_lora(str(truncated))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data[:9] + b"\xff" + data[10:])  # the header is no longer JSON
    with pytest.raises(LoraError, match="corrupt.safetensors is corrupt"):
        read_lora(str(corrupt))
    pickled = tmp_path / "pytorch_lora_weights.bin"
    pickled.write_bytes(b"\x80\x02}q\x00" + b"\x00" * 64)
    with pytest.raises(LoraError, match="Pickled"):
        read_lora(str(pickled))
    with pytest.raises(LoraError, match="does not exist"):
        read_lora(str(tmp_path / "missing.safetensors"))
    with pytest.raises(LoraError, match="several .safetensors"):
        read_lora(str(tmp_path))  # good, truncated, corrupt: which one?
    assert read_lora(str(tmp_path), weight_name="good.safetensors").origin == good


# ----------------------------------------------------------------------------------- not fitting
def _kohya(kind):
    from tests.lora_cases import kohya_file

    _, _, layers = model(kind)
    return kohya_file(layers, sgm_layout=kind if kind == "sdxl" else None,
                      te_prefix="lora_te1_" if kind == "sdxl" else "lora_te_")


def test_lora_for_another_base_model_is_refused():
    from tests.lora_cases import kohya_file

    # SDXL's UNet LoRA on SD 1.5: most SGM names have no module there (SD 1.5's second level has no
    # attention), and where a module exists, the shapes differ (SDXL's cross-attention reads 80 features)
    unet_only = {k: v for k, v in _kohya("sdxl").items() if k.startswith("lora_unet_")}
    with pytest.raises(LoraError, match=r"match no module of this model: 'lora_unet_.*another base model"):
        load(unet_only, "sd15")
    sd15_targets, _, _ = model("sd15")
    _, _, xl = model("sdxl")
    shared = {"unet": {p: v for p, v in xl["unet"].items() if p in sd15_targets["unet"]}}
    with pytest.raises(LoraError, match=r"module '.*attn2.to_k'.*\(out=32, in=80.* weight is \(32, 32\).*does not fit"):
        load(kohya_file(shared), "sd15")
    # with its text_encoder_2 keys, the missing component is named
    with pytest.raises(LoraError, match=r"text_encoder_2 \('lora_te2_"):
        load(_kohya("sdxl"), "sd15")


def test_keys_matching_no_module_are_named():
    state = _kohya("sd15")
    state["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = np.zeros((4, 16), np.float16)
    with pytest.raises(LoraError, match="lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"):
        load(state, "sd15")


@pytest.mark.parametrize("key,what", [("lora_unet_conv_in.hada_w1_a", "LoHa"), ("unet.conv_in.dora_scale", "DoRA"),
                                      ("something_else.weight", "something_else.weight")])
def test_unknown_keys_are_named(key, what):
    state = _kohya("sd15")
    state[key] = np.zeros((2, 2), np.float16)
    with pytest.raises(LoraError, match=what):
        load(state, "sd15")


def test_shape_rank_and_pair_errors_name_the_module():
    state = _kohya("sd15")
    key = "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"
    bad = dict(state, **{key: np.zeros((4, 16, 1, 1), np.float16)})  # a 1x1 kernel for a 3x3 conv
    with pytest.raises(LoraError, match=r"'down_blocks.0.resnets.0.conv1'.*kernel=\(1, 1\)"):
        load(bad, "sd15")
    bad = dict(state, **{key: np.zeros((3, 16, 3, 3), np.float16)})
    with pytest.raises(LoraError, match=r"'down_blocks.0.resnets.0.conv1'.*rank 3 but up has rank 4"):
        load(bad, "sd15")
    bad = {k: v for k, v in state.items() if k != key.replace("lora_down", "lora_up")}
    with pytest.raises(LoraError, match=r"'down_blocks.0.resnets.0.conv1' has .* but no up factor"):
        load(bad, "sd15")
    bad = dict(state, **{key.replace("lora_down.weight", "alpha"): np.zeros(2, np.float16)})
    with pytest.raises(LoraError, match="alpha 'lora_unet_down_blocks_0_resnets_0_conv1.alpha' has shape"):
        load(bad, "sd15")
    with pytest.raises(LoraError, match="holds no tensors"):
        load({}, "sd15")
