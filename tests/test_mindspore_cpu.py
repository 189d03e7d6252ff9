"""MindSpore on CPU: the stand-ins for mint ops without a CPU kernel, and mindone models loaded from
the tiny diffusers folders, each compared with its torch counterpart in float32.

Bounds are the smallest that hold with some headroom, measured on a 2-core x86_64 CPU with
MindSpore 2.10 / torch 2.13; each assert says what was seen.
"""

import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.mindspore]


@pytest.fixture(scope="module")
def ms():
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()
    import mindspore

    return mindspore


def _np(t):
    if hasattr(t, "asnumpy"):
        return t.asnumpy()
    return t.detach().cpu().numpy()


def _maxdiff(a, b):
    a, b = _np(a), _np(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# --- installation ---------------------------------------------------------------------------------
def test_install_is_idempotent_and_replaces_the_ops(ms):
    from mindspore import mint

    from fewstep.backends import mindspore_cpu as mc

    if not mc.is_cpu():
        pytest.skip("device target is not CPU: nothing is replaced there")
    assert mc.install_cpu_kernels() is True and mc.install_cpu_kernels() is True and mc.installed()
    assert mint.arange is mc.arange and mint.stack is mc.stack and mint.zeros_like is mc.zeros_like
    assert mint.baddbmm is mc.baddbmm and mint.nn.functional.gelu is mc.gelu and mint.nn.functional.conv2d is mc.conv2d
    assert mint.nn.functional.layer_norm is mc.layer_norm and mint.nn.functional.pad is mc.pad
    assert mint.nn.functional.avg_pool2d is mc.avg_pool2d
    assert mint.repeat_interleave is mc.repeat_interleave
    assert ms.Tensor.repeat_interleave is mc._tensor_repeat_interleave  # what every op returns answers to it
    assert sys.modules["mindspore.common.tensor"].Tensor is ms.Tensor
    assert ms.Parameter(ms.Tensor(np.ones(2, np.float32)), name="p").repeat_interleave(2).shape == (4,)
    import mindspore.mint.nn.functional as F  # how mindone imports it: the same module object

    assert F.gelu is mc.gelu
    # the layers keep their class (isinstance checks, subclasses such as FP32LayerNorm) and get a CPU construct
    assert mint.nn.Conv2d.construct is mc._conv2d_construct
    assert mint.nn.LayerNorm.construct is mc._layer_norm_construct
    assert mint.nn.AvgPool2d.construct is mc._avg_pool2d_construct
    assert mc.original(mint, "arange") is not mc.arange
    assert mc.original(mint.nn.functional, "avg_pool2d") is not mc.avg_pool2d
    assert mc.original(mint.nn.AvgPool2d, "construct") is not mc._avg_pool2d_construct
    assert mc.original(ms.Tensor, "repeat_interleave") is not mc._tensor_repeat_interleave


def test_install_does_nothing_off_cpu(ms, monkeypatch):
    from mindspore import mint

    from fewstep.backends import mindspore_cpu as mc

    before = (mint.arange, mint.nn.functional.conv2d, mint.nn.Conv2d.construct)
    monkeypatch.setattr(mc, "_INSTALLED", False)
    monkeypatch.setattr(mc, "is_cpu", lambda: False)  # as on Ascend
    monkeypatch.setattr(mc, "_replacements", lambda: pytest.fail("must not replace anything off CPU"))
    assert mc.install_cpu_kernels() is False
    assert (mint.arange, mint.nn.functional.conv2d, mint.nn.Conv2d.construct) == before


def _patched(mc):
    """{(owner, name): (what owner's own __dict__ holds, or None, what getattr gives)} for every patched attribute."""
    return {(owner, name): (vars(owner).get(name), getattr(owner, name)) for owner, name, _ in mc._replacements()}


def test_uninstall_restores_every_attribute_and_install_works_again(ms):
    from mindspore import mint

    from fewstep.backends import mindspore_cpu as mc

    if not mc.is_cpu():
        pytest.skip("device target is not CPU: nothing is replaced there")
    assert mc.installed()
    originals = {key: mc.original(*key) for key in _patched(mc)}
    try:
        assert mc.uninstall() is True and not mc.installed()
        after = _patched(mc)
        for key, (own, seen) in after.items():
            assert seen is originals[key], key  # the very object that was there before
        # an inherited method is inherited again, not shadowed by a copy on the class
        assert "repeat_interleave" not in vars(ms.Tensor) and after[(ms.Tensor, "repeat_interleave")][0] is None
        assert mint.arange is originals[(mint, "arange")] and mint.arange is not mc.arange
        assert mc.original(mint, "arange") is mint.arange  # nothing replaced: the current op
        assert mc.uninstall() is False  # nothing left to take out
    finally:
        assert mc.install_cpu_kernels() is True  # the other tests of this module run with them
    assert mc.installed() and mint.arange is mc.arange and ms.Tensor.repeat_interleave is mc._tensor_repeat_interleave
    assert mint.nn.Conv2d.construct is mc._conv2d_construct
    assert all(mc.original(*key) is value for key, value in originals.items())


def test_cpu_kernels_context_takes_out_only_what_it_put_in(ms):
    from mindspore import mint

    from fewstep.backends import mindspore_cpu as mc

    if not mc.is_cpu():
        pytest.skip("device target is not CPU: nothing is replaced there")
    with mc.cpu_kernels() as active:  # already installed (the fixture): they stay after the block
        assert active is True and mint.arange is mc.arange
    assert mc.installed() and mint.arange is mc.arange
    mc.uninstall()
    try:
        before = _patched(mc)
        with pytest.raises(KeyError):
            with mc.cpu_kernels(complete_exports=False) as active:
                assert active is True and mc.installed() and mint.nn.functional.gelu is mc.gelu
                raise KeyError("an error inside the block")  # the stand-ins come out all the same
        assert not mc.installed() and _patched(mc) == before
    finally:
        mc.install_cpu_kernels()


def test_creating_the_backend_installs_them_without_importing_mindone():
    import subprocess

    code = ("import sys\nimport fewstep\nfrom fewstep.backends import mindspore_cpu as mc\n"
            "assert not mc.installed()\n"  # importing fewstep and this module installs nothing
            "fewstep.get_backend('mindspore')\n"
            "from mindspore import mint\n"
            "print(mc.installed(), mint.arange is mc.arange, 'mindone' in sys.modules)\n"
            "print(mc.uninstall(), mc.installed(), mint.arange is mc.original(mint, 'arange'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import mindspore

    on_cpu = mindspore.get_context("device_target") == "CPU"
    want = ["True True False", "True False True"] if on_cpu else ["False False False", "False False True"]
    assert result.stdout.splitlines()[-2:] == want


# --- each stand-in against torch ------------------------------------------------------------------
@pytest.mark.parametrize("args,kwargs", [((5,), {}), ((2, 11, 3), {}), ((0.0, 1.0, 0.125), {}),
                                         ((0, 10), {"dtype": "float32"}), ((-3, 3), {"dtype": "int32"})])
@pytest.mark.parity
@pytest.mark.torch
def test_arange(ms, args, kwargs):
    import torch

    from fewstep.backends.mindspore_cpu import arange

    got = arange(*args, **{k: getattr(ms, v) for k, v in kwargs.items()})
    want = torch.arange(*args, **{k: getattr(torch, v) for k, v in kwargs.items()})
    assert str(got.dtype).lower() == str(want.dtype).replace("torch.", "")
    np.testing.assert_array_equal(_np(got), _np(want))  # exact


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_stack(ms, dim):
    import torch

    from fewstep.backends.mindspore_cpu import stack

    arrays = [np.random.RandomState(i).randn(2, 3).astype(np.float32) for i in range(3)]
    got = stack([ms.Tensor(a) for a in arrays], dim=dim)
    np.testing.assert_array_equal(_np(got), _np(torch.stack([torch.tensor(a) for a in arrays], dim=dim)))


@pytest.mark.parity
@pytest.mark.torch
def test_randn(ms):
    """A normal draw of the right shape and dtype (it only initialises weights that are then loaded)."""
    from mindspore import mint

    from fewstep.backends.mindspore_cpu import randn

    assert mint.randn is randn
    x = _np(randn(200, 50))
    assert x.shape == (200, 50) and abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
    assert tuple(randn((1, 4, 8)).shape) == (1, 4, 8) and randn(3, dtype=ms.float16).dtype == ms.float16


def test_zeros_like(ms):
    from fewstep.backends.mindspore_cpu import zeros_like

    x = ms.Tensor(np.ones((2, 3), np.float32))
    assert zeros_like(x).dtype == ms.float32 and zeros_like(x, dtype=ms.int32).dtype == ms.int32
    np.testing.assert_array_equal(_np(zeros_like(x)), np.zeros((2, 3), np.float32))


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, 2.0), (0, 1)])
def test_baddbmm(ms, beta, alpha):
    import torch

    from fewstep.backends.mindspore_cpu import baddbmm

    rng = np.random.RandomState(0)
    x, a, b = rng.randn(3, 4, 5), rng.randn(3, 4, 6), rng.randn(3, 6, 5)
    x[0, 0, 0] = np.nan if beta == 0 else x[0, 0, 0]  # torch ignores input when beta == 0
    x, a, b = (v.astype(np.float32) for v in (x, a, b))
    got = baddbmm(ms.Tensor(x), ms.Tensor(a), ms.Tensor(b), beta=beta, alpha=alpha)
    want = torch.baddbmm(torch.tensor(x), torch.tensor(a), torch.tensor(b), beta=beta, alpha=alpha)
    assert _maxdiff(got, want) < 2e-6  # seen 9.5e-7 on values up to ~14 (bmm then add vs fused)


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(ms, approximate):
    import torch

    from fewstep.backends.mindspore_cpu import gelu

    x = np.random.RandomState(0).randn(4, 1000).astype(np.float32) * 4
    diff = _maxdiff(gelu(ms.Tensor(x), approximate=approximate),
                    torch.nn.functional.gelu(torch.tensor(x), approximate=approximate))
    assert diff < 2e-6  # seen 9.5e-7 ("none", 1 ulp at |x| ~15) and 1.5e-7 ("tanh")


CONV_CASES = [
    dict(stride=1, padding=1), dict(stride=2, padding=1), dict(stride=2, padding=0), dict(stride=1, padding=(1, 0)),
    dict(stride=1, padding="same"), dict(stride=1, padding="valid"), dict(stride=1, padding=2, dilation=2),
    dict(stride=1, padding=1, groups=2), dict(stride=1, padding=1, bias=False),
]


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv2d(ms, case):
    import torch

    from fewstep.backends.mindspore_cpu import conv2d

    case = dict(case)
    rng = np.random.RandomState(0)
    groups = case.get("groups", 1)
    x = rng.randn(2, 4, 9, 8).astype(np.float32)
    w = rng.randn(6, 4 // groups, 3, 3).astype(np.float32)
    b = rng.randn(6).astype(np.float32) if case.pop("bias", True) else None
    got = conv2d(ms.Tensor(x), ms.Tensor(w), None if b is None else ms.Tensor(b), **case)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b), **case)
    assert _maxdiff(got, want) < 1e-5  # seen <= 2.9e-6 on outputs up to ~24 (a few ulps)


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
def test_conv2d_layer(ms, padding_mode):
    import torch
    from mindspore import mint

    conv = mint.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=padding_mode)
    assert sorted(name for name, _ in conv.parameters_and_names()) == ["bias", "weight"]  # mindone loads by name
    ref = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=padding_mode)
    conv.weight.set_data(ms.Tensor(_np(ref.weight)))
    conv.bias.set_data(ms.Tensor(_np(ref.bias)))
    x = np.random.RandomState(1).randn(2, 4, 9, 9).astype(np.float32)
    with torch.no_grad():
        assert _maxdiff(conv(ms.Tensor(x)), ref(torch.tensor(x))) < 1e-6  # seen 2.4e-7 (outputs up to ~1.7)


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("shape,affine", [((8,), True), ((8,), False), ((5, 8), True)])
def test_layer_norm(ms, shape, affine):
    import torch

    from fewstep.backends.mindspore_cpu import layer_norm

    rng = np.random.RandomState(0)
    x = (rng.randn(3, 5, 8) * 10 + 3).astype(np.float32)
    w = rng.randn(*shape).astype(np.float32) if affine else None
    b = rng.randn(*shape).astype(np.float32) if affine else None
    got = layer_norm(ms.Tensor(x), shape, None if w is None else ms.Tensor(w), None if b is None else ms.Tensor(b))
    want = torch.nn.functional.layer_norm(torch.tensor(x), shape, None if w is None else torch.tensor(w),
                                          None if b is None else torch.tensor(b))
    assert _maxdiff(got, want) < 2e-6  # seen <= 4.8e-7 (outputs up to ~5)
    half = layer_norm(ms.Tensor(x).astype(ms.float16), shape)  # computed in float32, returned in float16
    assert half.dtype == ms.float16


@pytest.mark.parity
@pytest.mark.torch
def test_layer_norm_layer(ms):
    import torch
    from mindspore import mint

    norm = mint.nn.LayerNorm(8, eps=1e-6)
    assert sorted(name for name, _ in norm.parameters_and_names()) == ["bias", "weight"]
    ref = torch.nn.LayerNorm(8, eps=1e-6)
    rng = np.random.RandomState(2)
    w, b = rng.randn(8).astype(np.float32), rng.randn(8).astype(np.float32)
    norm.weight.set_data(ms.Tensor(w))
    norm.bias.set_data(ms.Tensor(b))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
        ref.bias.copy_(torch.tensor(b))
        x = rng.randn(2, 7, 8).astype(np.float32)
        assert _maxdiff(norm(ms.Tensor(x)), ref(torch.tensor(x))) < 2e-6  # seen 4.8e-7 (outputs up to ~4.9)


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("mode,value", [("constant", None), ("constant", 2.5), ("reflect", None), ("replicate", None)])
def test_pad(ms, mode, value):
    import torch

    from fewstep.backends.mindspore_cpu import pad

    x = np.random.RandomState(0).randn(2, 3, 5, 6).astype(np.float32)
    widths = (0, 1, 0, 1) if mode == "constant" else (1, 2, 2, 1)
    kwargs = {} if value is None else {"value": value}
    got = pad(ms.Tensor(x), widths, mode=mode, **kwargs)
    np.testing.assert_array_equal(_np(got), _np(torch.nn.functional.pad(torch.tensor(x), widths, mode=mode, **kwargs)))


AVG_POOL_CASES = [
    dict(kernel_size=2, stride=2), dict(kernel_size=2, stride=2, ceil_mode=True),  # the T2I-Adapter's
    dict(kernel_size=2),  # stride None -> kernel_size (DiffEdit's call)
    dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=2, stride=2, divisor_override=3),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5),
]


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])  # 7x9: ceil_mode adds a partial last window
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=[str(c) for c in AVG_POOL_CASES])
def test_avg_pool2d(ms, case, size):
    import torch

    from fewstep.backends.mindspore_cpu import avg_pool2d

    x = np.random.RandomState(0).randn(2, 3, *size).astype(np.float32)
    got = avg_pool2d(ms.Tensor(x), **case)
    assert _maxdiff(got, torch.nn.functional.avg_pool2d(torch.tensor(x), **case)) < 1e-6  # seen 0.0 (exact)


@pytest.mark.parity
@pytest.mark.torch
def test_avg_pool2d_unbatched(ms):
    import torch

    from fewstep.backends.mindspore_cpu import avg_pool2d

    x = np.random.RandomState(0).randn(3, 7, 9).astype(np.float32)  # (C, H, W), as torch accepts
    got = avg_pool2d(ms.Tensor(x), 2, ceil_mode=True)
    assert _maxdiff(got, torch.nn.functional.avg_pool2d(torch.tensor(x), 2, ceil_mode=True)) < 1e-6  # seen 0.0


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("case", [dict(kernel_size=2, stride=2, ceil_mode=True),  # as mindone's T2I-Adapter builds it
                                  dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                  dict(kernel_size=2, divisor_override=3)], ids=str)
def test_avg_pool2d_layer(ms, case):
    import torch
    from mindspore import mint

    pool = mint.nn.AvgPool2d(**case)
    assert list(pool.parameters_and_names()) == []
    x = np.random.RandomState(3).randn(2, 4, 7, 9).astype(np.float32)
    assert _maxdiff(pool(ms.Tensor(x)), torch.nn.AvgPool2d(**case)(torch.tensor(x))) < 1e-6  # seen 0.0 (exact)


REPEAT_CASES = [  # (repeats, dim); per-item repeats are given as a list, or as a Tensor with `tensor:`
    (2, 0), (3, 1), (2, -1), (2, None), (1, 1), (0, 1),
    ([1, 0, 3], 1), ([2, 1, 1, 3], -1), ([2], 0), (list(range(24)), None),
    ("tensor:1,0,3", 1), ("tensor:2,1", 0), ("tensor:2", -1),
]


def _repeats(repeats, framework):
    if isinstance(repeats, str):  # a tensor of counts, int64 as torch wants it
        return framework.tensor(np.array([int(c) for c in repeats.split(":")[1].split(",")], np.int64))
    return repeats


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("output_size", [False, True])
@pytest.mark.parametrize("form", ["function", "method"])
@pytest.mark.parametrize("repeats,dim", REPEAT_CASES, ids=str)
def test_repeat_interleave(ms, repeats, dim, form, output_size):
    """mint.repeat_interleave and Tensor.repeat_interleave (as mindone's UNetMotionModel calls it, with
    output_size) against torch, for int repeats and per-item repeats (torch takes those as a Tensor)."""
    import torch
    from mindspore import mint

    x = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    want = torch.repeat_interleave(torch.tensor(x), _repeats(repeats, torch) if not isinstance(repeats, list)
                                   else torch.tensor(repeats), dim=dim)
    kwargs = {"output_size": want.shape[0 if dim is None else dim]} if output_size else {}
    if form == "function":
        got = mint.repeat_interleave(ms.Tensor(x), _repeats(repeats, ms), dim=dim, **kwargs)
    else:
        got = ms.Tensor(x).repeat_interleave(_repeats(repeats, ms), dim, **kwargs)
    assert got.dtype == ms.float32
    np.testing.assert_array_equal(_np(got), _np(want))  # exact: a copy


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "int32", "int64", "bool"])
@pytest.mark.parametrize("repeats", [2, [1, 3]], ids=str)
def test_repeat_interleave_dtypes(ms, dtype, repeats):
    """Other dtypes keep theirs (ops.repeat_interleave takes no bool: those go through gather); a 0-d input."""
    import torch

    from fewstep.backends.mindspore_cpu import repeat_interleave

    x = np.random.RandomState(1).randn(3, 2) > 0 if dtype == "bool" else np.arange(6).reshape(3, 2).astype(dtype)
    got = repeat_interleave(ms.Tensor(x), repeats, dim=1)
    want = torch.tensor(x).repeat_interleave(repeats if isinstance(repeats, int) else torch.tensor(repeats), dim=1)
    assert str(got.dtype).lower() == str(want.dtype).replace("torch.", "")
    np.testing.assert_array_equal(_np(got), _np(want))
    np.testing.assert_array_equal(_np(repeat_interleave(ms.Tensor(np.float32(5)), 3)), [5, 5, 5])


def test_repeat_interleave_rejects_what_torch_rejects(ms):
    from mindspore import mint

    x = ms.Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="output_size=5 but the repeats give 4"):
        mint.repeat_interleave(x, 2, dim=0, output_size=5)
    with pytest.raises(ValueError, match="output_size=4 but the repeats give 3"):
        x.repeat_interleave(ms.Tensor(np.array([1, 2])), dim=0, output_size=4)
    with pytest.raises(ValueError, match="3 repeats for 2 items"):
        x.repeat_interleave([1, 2, 3], dim=0)
    with pytest.raises(ValueError, match="must not be negative"):
        mint.repeat_interleave(x, [1, -1], dim=0)
    with pytest.raises(ValueError, match="out of range"):
        mint.repeat_interleave(x, 2, dim=2)
    with pytest.raises(ValueError, match="an int or a 1-D sequence of ints"):
        mint.repeat_interleave(x, 1.5, dim=0)


# --- mindone models from the tiny folders against diffusers/transformers --------------------------
@pytest.fixture(scope="module")
def libs(ms):
    """mindone (imported after the stand-ins are installed) and the torch libraries, once per module."""
    import diffusers
    import mindone.diffusers
    import mindone.transformers
    import torch
    import transformers

    return dict(md=mindone.diffusers, mt=mindone.transformers, diffusers=diffusers, transformers=transformers,
                torch=torch)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from fewstep.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-ms")
    return {kind: tiny_pipeline(kind, path=root / kind)
            for kind in ("sd15", "sd21", "sdxl", "sd15-inpaint", "sdxl-inpaint")}


# seen: sd15 1.0e-5, sd21 9.6e-6, sdxl 8.0e-6, sd15-inpaint 7.4e-6, sdxl-inpaint 1.2e-5 (outputs up to ~1.8)
UNET_BOUND = 3e-5


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl", "sd15-inpaint", "sdxl-inpaint"])
def test_unet_matches_diffusers(libs, folders, ms, kind):
    torch = libs["torch"]
    ref = libs["diffusers"].UNet2DConditionModel.from_pretrained(folders[kind], subfolder="unet").eval()
    unet = libs["md"].UNet2DConditionModel.from_pretrained(folders[kind], subfolder="unet")
    cfg = ref.config
    rng = np.random.RandomState(1)
    sample = rng.randn(2, cfg.in_channels, 32, 32).astype(np.float32)
    timesteps = np.array([999, 1], np.int64)
    context = rng.randn(2, 77, cfg.cross_attention_dim).astype(np.float32)
    extra_t, extra_m = {}, {}
    if cfg.addition_embed_type == "text_time":
        pooled = rng.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim)
        time_ids = np.array([[64, 64, 0, 0, 64, 64], [128, 96, 8, 0, 64, 64]], np.float32)
        extra_t = {"added_cond_kwargs": {"text_embeds": torch.tensor(pooled.astype(np.float32)),
                                         "time_ids": torch.tensor(time_ids)}}
        extra_m = {"added_cond_kwargs": {"text_embeds": ms.Tensor(pooled.astype(np.float32)),
                                         "time_ids": ms.Tensor(time_ids)}}
    with torch.no_grad():
        want = ref(torch.tensor(sample), torch.tensor(timesteps), torch.tensor(context), **extra_t).sample
    got = unet(ms.Tensor(sample), ms.Tensor(timesteps), ms.Tensor(context), **extra_m)[0]  # mindone: tuples
    assert _maxdiff(got, want) < UNET_BOUND


@pytest.mark.parity
@pytest.mark.torch
def test_vae_matches_diffusers(libs, folders, ms):
    torch = libs["torch"]
    ref = libs["diffusers"].AutoencoderKL.from_pretrained(folders["sd15"], subfolder="vae").eval()
    vae = libs["md"].AutoencoderKL.from_pretrained(folders["sd15"], subfolder="vae")
    rng = np.random.RandomState(2)
    image = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    latents = rng.randn(2, 4, 32, 32).astype(np.float32)
    with torch.no_grad():
        moments = ref.encode(torch.tensor(image)).latent_dist.parameters
        decoded = ref.decode(torch.tensor(latents)).sample
    # mindone's encode returns the raw moments (mean and logvar stacked on channels), not a distribution
    got_moments = vae.encode(ms.Tensor(image))[0]
    assert got_moments.shape == (2, 8, 32, 32)  # VAE factor 2: 64x64 images <-> 32x32 latents
    assert _maxdiff(got_moments, moments) < 5e-6  # seen 1.3e-6 (values up to ~1)
    assert _maxdiff(vae.decode(ms.Tensor(latents))[0], decoded) < 1e-5  # seen 3.7e-6 (values up to ~2.6)


def _ids(libs, folder, subfolder):
    tok = libs["transformers"].CLIPTokenizer.from_pretrained(folder, subfolder=subfolder)
    return tok(["a photo of an astronaut riding a horse on mars", ""], padding="max_length",
               max_length=tok.model_max_length, truncation=True, return_tensors="np").input_ids


# seen <= 1.9e-6 on last_hidden_state (values up to ~3.7), 1.1e-6 pooled / penultimate layer
TEXT_BOUND = 5e-6


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("kind", ["sd15", "sd21"])  # quick_gelu + eos padding; gelu + "!" padding
def test_text_encoder_matches_transformers(libs, folders, ms, kind):
    torch = libs["torch"]
    ids = _ids(libs, folders[kind], "tokenizer")
    ref = libs["transformers"].CLIPTextModel.from_pretrained(folders[kind], subfolder="text_encoder").eval()
    enc = libs["mt"].CLIPTextModel.from_pretrained(folders[kind], subfolder="text_encoder")
    with torch.no_grad():
        want = ref(torch.tensor(ids), output_hidden_states=True)
    got = enc(ms.Tensor(ids), output_hidden_states=True)  # (last_hidden_state, pooler_output, hidden_states)
    assert _maxdiff(got[0], want.last_hidden_state) < TEXT_BOUND
    assert _maxdiff(got[1], want.pooler_output) < TEXT_BOUND
    assert _maxdiff(got[2][-2], want.hidden_states[-2]) < TEXT_BOUND


@pytest.mark.parity
@pytest.mark.torch
def test_sdxl_second_text_encoder_matches_transformers(libs, folders, ms):
    torch = libs["torch"]
    ids = _ids(libs, folders["sdxl"], "tokenizer_2")
    ref = libs["transformers"].CLIPTextModelWithProjection.from_pretrained(
        folders["sdxl"], subfolder="text_encoder_2").eval()
    enc = libs["mt"].CLIPTextModelWithProjection.from_pretrained(folders["sdxl"], subfolder="text_encoder_2")
    with torch.no_grad():
        want = ref(torch.tensor(ids), output_hidden_states=True)
    got = enc(ms.Tensor(ids), output_hidden_states=True)  # (text_embeds, last_hidden_state, hidden_states)
    assert got[0].shape == (2, 40) and got[2][-2].shape == (2, 77, 48)
    assert _maxdiff(got[0], want.text_embeds) < TEXT_BOUND
    assert _maxdiff(got[1], want.last_hidden_state) < TEXT_BOUND
    assert _maxdiff(got[2][-2], want.hidden_states[-2]) < TEXT_BOUND


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.parametrize("kind,cls", [
    ("sd15", "StableDiffusionPipeline"), ("sd15-inpaint", "StableDiffusionInpaintPipeline"),
    ("sdxl", "StableDiffusionXLPipeline"), ("sdxl-inpaint", "StableDiffusionXLInpaintPipeline"),
])
def test_mindone_pipelines_load_the_folders(libs, folders, ms, kind, cls):
    pipe = libs["md"].DiffusionPipeline.from_pretrained(folders[kind])
    assert type(pipe).__name__ == cls
    assert getattr(pipe, "safety_checker", None) is None and pipe.feature_extractor is None
    if kind == "sdxl":  # mindone's own pipeline runs end to end on CPU too (reaches mint.zeros_like)
        pipe.set_progress_bar_config(disable=True)
        images = pipe("a squirrel", num_inference_steps=2, output_type="np",
                      generator=np.random.Generator(np.random.PCG64(0)))[0]  # mindone returns a tuple
        assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


# --- mindone's own pipelines with the few-step schedulers, against fewstep's MindSpore pipeline -------------
DEMO_PIPELINE = "demo"  # fewstep/demo/weights/pipeline: its model_index.json names TCDScheduler
PROMPT = "a red circle on a blue background"  # in the demo model's vocabulary


def _few_step_folder(kind):
    import os

    import fewstep.demo
    from fewstep.testing import tiny_pipeline

    if kind == DEMO_PIPELINE:
        return os.path.join(os.path.dirname(fewstep.demo.__file__), "weights", "pipeline")
    return tiny_pipeline(kind)


def test_mindone_exports_every_scheduler_its_loader_looks_up(ms):
    """mindone.diffusers 0.5 lacks TCDScheduler at its top level, where its pipeline loader looks a folder's
    scheduler up by name; the install adds it (and is idempotent)."""
    import mindone.diffusers as md
    from mindone.diffusers import schedulers

    from fewstep.backends.mindspore_cpu import complete_mindone_exports

    assert md.TCDScheduler is schedulers.TCDScheduler and md.LCMScheduler is schedulers.LCMScheduler
    assert complete_mindone_exports() == []  # nothing left to add


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
@pytest.mark.parametrize("kind", [DEMO_PIPELINE, pytest.param("sd15", marks=pytest.mark.torch)])  # torch builds sd15
def test_mindone_pipeline_with_few_step_schedulers_matches_fewstep(ms, kind, scheduler):
    """mindone's own StableDiffusionPipeline with its LCMScheduler / TCDScheduler runs on CPU (classifier-free
    guidance on, TCD with noise) and gives fewstep's MindSpore pipeline's image for the same latents."""
    from fewstep.parity.sides import load_side

    folder = _few_step_folder(kind)
    theirs = load_side(folder, library="mindone", scheduler=scheduler)
    ours = load_side(folder, library="fewstep", backend="mindspore", scheduler=scheduler)
    assert type(theirs.pipe).__name__ == "StableDiffusionPipeline" and theirs.library == "mindone"
    assert type(theirs.pipe.scheduler).__module__.startswith("mindone.diffusers.schedulers")
    assert type(theirs.pipe.scheduler).__name__ == type(ours.pipe.scheduler).__name__ == \
        {"lcm": "LCMScheduler", "tcd": "TCDScheduler"}[scheduler]
    height, width = ours.default_size()
    latents = np.random.RandomState(3).randn(*ours.latent_shape(1, height, width)).astype(np.float32)
    call = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=1.5, height=height, width=width)
    if scheduler == "tcd":
        call["eta"] = 0.3  # TCD draws noise between steps: both sides from the same numpy stream
    got = theirs.run(call, latents, seed=7, stream="numpy")
    want = ours.run(call, latents, seed=7, stream="numpy")
    assert got.shape == want.shape == (1, height, width, 3) and np.isfinite(got).all()
    diff = float(np.abs(got.astype(np.float64) - want).max())
    assert diff < 1e-4, diff  # seen 7.0e-6 (demo, TCD), 2.0e-6 (demo, LCM), 5.4e-7 (tiny sd15); images in [0, 1]


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
def test_parity_cli_against_mindone_runs_on_cpu(ms, scheduler, tmp_path, monkeypatch, capsys):
    """`fewstep parity PROMPT --against mindone` with the default (demo) model: mindone's own pipeline loads a
    folder naming TCDScheduler and runs with either scheduler; the picture goes only where -o says."""
    from fewstep.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["parity", PROMPT, "--against", "mindone", "--scheduler", scheduler, "--steps", "2", "--seed", "0",
                 "-o", "picture.png"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = [l for l in out.splitlines() if "largest difference" in l][-1]
    assert line.startswith("seed 0  largest difference mindspore vs mindone: ")
    assert float(line.split(": ")[1].split()[0]) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]
