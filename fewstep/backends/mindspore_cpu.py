"""CPU stand-ins for the `mindspore.mint` ops that have no CPU kernel.

mindone (diffusers/transformers ported to MindSpore) is written on `mindspore.mint`; about twenty
mint ops have no CPU kernel in MindSpore 2.7-2.10 ("RuntimeError: The kernel Arange unregistered").
`install_cpu_kernels()` swaps the ones that Stable Diffusion / SDXL UNets (incl. 9-channel inpaint),
the KL VAE (encoder and decoder) and CLIP text encoders reach for equivalents built on ops that do
run on CPU, so that the same models can be checked against diffusers on any laptop. On Ascend (or
any device target other than CPU) it does nothing.

Installing and removing them (nothing happens at import of this module or of fewstep):

    fewstep.get_backend("mindspore")  # creating the MindSpore backend installs them (on CPU)
    install_cpu_kernels()             # the same, explicitly; also completes mindone's exports (below)
    uninstall()                       # every replaced attribute is the original object again
    with cpu_kernels(): ...           # in for the block; out after, unless they were in before it

Install them before mindone is imported (see below); `installed()` says whether they are in.

Replaced (each reached by the tiny SD/SDXL models of fewstep.testing unless said otherwise):
mint.arange (UNet timestep embedding), mint.nn.functional.gelu (GEGLU feed-forward, CLIP "gelu"),
mint.nn.Conv2d (every conv), mint.nn.LayerNorm (transformer blocks), mint.nn.functional.pad (the VAE
encoder's asymmetric pad before its strided conv), mint.zeros_like (mindone's SDXL pipelines), mint.randn (IP-Adapter Plus projection init),
mint.stack, mint.nn.functional.conv2d / layer_norm (other mindone models and LoRA convs),
mint.baddbmm (attention with a mask), and mint.nn.AvgPool2d / mint.nn.functional.avg_pool2d (kernel
"AvgPool2D"; not reached by the tiny SD/SDXL models: mindone's T2I-Adapter builds
`mint.nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True)` in its downsampling blocks;
Downsample2D(use_conv=False), ResnetBlock2D(down=True) and the DiffEdit pipeline reach it too), and
mint.repeat_interleave / Tensor.repeat_interleave (kernels "RepeatInterleaveInt" / "RepeatInterleaveTensor";
not reached by the tiny SD/SDXL models: mindone's UNetMotionModel (AnimateDiff) calls
`emb.repeat_interleave(num_frames, dim=0, output_size=...)` on the time embedding and on IP-Adapter image
embeddings, and mindone's attention processors call both forms on masks and grouped key/value heads).

How the swap reaches mindone: mindone modules do `from mindspore import mint` and look names up on
the `mint` modules when they call or build a layer (`mint.arange(...)`, `mint.nn.Conv2d(...)`,
`F.gelu` with `F = mindspore.mint.nn.functional`), so replacing the module attributes reaches them.
Two things are bound earlier, which is why this must run before mindone is imported:
mindone.transformers' GELUActivation stores `mint.nn.functional.gelu` when it is constructed (and
`mindone.transformers.activations` builds some at import), and a few mindone classes *subclass*
`mint.nn.Conv2d` / `mint.nn.LayerNorm` at import (LoRACompatibleConv, FP32LayerNorm). For the
latter the layers (and mint.nn.AvgPool2d, alike) are not replaced by new classes: `construct` is
replaced on the original classes, which keeps every isinstance check and subclass working and keeps
the parameter names (`weight`, `bias`) that mindone's from_pretrained weight conversion loads into.
A Tensor method is replaced on `mindspore.Tensor` (the same class as `mindspore.common.tensor.Tensor`,
which every op returns and every Parameter answers to); without `output_size` the original method
happens to take a path that runs on CPU, with it (as mindone calls it) the one without a kernel.

Each stand-in matches its torch counterpart in float32 (tests/test_mindspore_cpu.py checks each one).

Two more are there for graph mode (`mindspore.jit`, which `MindSporeUNet.compile()` uses), where MindSpore 2.7-2.10
on CPU lack kernels that PyNative has: mint.split ("SplitWithSize", MindSpore 2.7) and the `Tensor.chunk` of
mindone's GEGLU feed-forward ("Chunk"; `GEGLU.construct` is replaced on mindone's class by
`install_mindone_layers()`, once mindone's models are imported). Both give the same values as the originals
(slices), so PyNative results do not change.

Once the stand-ins are in, `complete_mindone_exports()` also fills a gap of mindone.diffusers 0.5 that keeps
its own pipelines from loading folders on any device: `mindone.diffusers.schedulers` has TCDScheduler (and
ScoreSdeVeScheduler), but the package's top level does not export them, so `from_pretrained` of a folder whose
model_index.json names TCDScheduler (fewstep's demo model, any TCD checkpoint) fails with "module
mindone.diffusers has no attribute TCDScheduler", even with `scheduler=` passed (mindone checks the folder's
class by name first). mindone's pipelines with LCMScheduler and TCDScheduler then run on CPU end to end.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings

import mindspore as ms
import numpy as np
from mindspore import mint, ops

_INSTALLED = False
_EVER_INSTALLED = False  # mindone imported before the first install is what the warning is about
_LOCK = threading.Lock()
_MISSING = object()
_ORIGINALS = {}  # (owner, name) -> the op that was replaced; see `original`
_OWN = {}        # (owner, name) -> what owner's own __dict__ held, or _MISSING; see `uninstall`


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


# --- functions ------------------------------------------------------------------------------------
def arange(start=0, end=None, step=1, *, dtype=None):
    """Replaces mint.arange (kernel "Arange" unregistered on CPU): ops.arange has the same dtype rules
    (integers -> int64, any float -> float32)."""
    return ops.arange(start, end, step, dtype=dtype)


def split(tensor, split_size_or_sections, dim=0):
    """Replaces mint.split (kernel "SplitWithSize" has no CPU kernel under mindspore.jit in MindSpore 2.7) with
    ops.split, which slices: the same pieces (an int: chunks of that size, the last one smaller; a list: those
    sizes). Reached by the UNet's timestep embedding (`mint.split(emb, [half, half], dim=1)`)."""
    return ops.split(tensor, split_size_or_sections, dim)


def stack(tensors, dim=0, *, out=None):
    """Replaces mint.stack (kernel "StackExt" unregistered on CPU)."""
    return ops.stack(tensors, axis=dim)


def randn(*size, generator=None, dtype=None):
    """Replaces mint.randn (kernel "InplaceNormal" cannot be created on CPU) with ops.standard_normal.
    Reached when mindone builds an IP-Adapter Plus projection (its Resampler's `latents` start as
    randn and are then overwritten by the loaded weights). `generator` is not honoured: these draws
    only initialise weights that are loaded right after."""
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
    out = ops.standard_normal(shape)
    return out.astype(dtype) if dtype is not None else out


def zeros_like(input, *, dtype=None):  # pylint: disable=redefined-builtin
    """Replaces mint.zeros_like (kernel "ZerosLikeExt" unregistered on CPU). Not reached by the models;
    mindone's own SDXL pipelines call it for the zeroed negative prompt embeddings."""
    return ops.zeros_like(input, dtype=dtype)


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):  # pylint: disable=redefined-builtin
    """Replaces mint.baddbmm (kernel "Baddbmm" unregistered on CPU): beta * input + alpha * batch1 @ batch2.
    Not reached by the default attention processor; `Attention.get_attention_scores` uses it when an
    attention mask is given (AttnProcessor, attention slicing). As in torch, beta=0 ignores `input`."""
    out = mint.bmm(batch1, batch2)
    if alpha != 1:
        out = out * alpha
    if beta == 0:
        return out
    return out + (input if beta == 1 else input * beta)


def gelu(input, approximate="none"):  # pylint: disable=redefined-builtin
    """Replaces mint.nn.functional.gelu (kernel "GeluExt" unregistered on CPU); erf form or tanh form."""
    return ops.gelu(input, approximate=approximate)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # pylint: disable=redefined-builtin
    """Replaces mint.nn.functional.conv2d (kernels "Conv2DExt" / "Conv2DPadding" unregistered on CPU).

    padding: an int, a pair, or "same" / "valid" as in torch."""
    if isinstance(padding, str):
        pad_mode, padding = padding, 0
    else:
        pad_mode, padding = "pad", _pair(padding)
    return ops.conv2d(input, weight, bias, _pair(stride), pad_mode, padding, _pair(dilation), groups)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # pylint: disable=redefined-builtin
    """Replaces mint.nn.functional.layer_norm (kernel "LayerNormExt" cannot be created on CPU).

    Biased variance over the trailing `normalized_shape` dims, computed in float32 (as torch does for
    half inputs) and cast back."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    dims = tuple(range(-len(normalized_shape), 0))
    dtype = input.dtype
    x = input.astype(ms.float32) if dtype in (ms.float16, ms.bfloat16) else input
    mean = mint.mean(x, dims, True)
    centered = x - mean
    y = centered * mint.rsqrt(mint.mean(centered * centered, dims, True) + eps)
    if weight is not None:
        y = y * weight.astype(y.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y.astype(dtype)


def pad(input, pad, mode="constant", value=None):  # pylint: disable=redefined-builtin,redefined-outer-name
    """Replaces mint.nn.functional.pad (kernels "ConstantPadND", "ReflectionPad2D", "ReplicationPad2D"
    unregistered on CPU). Reached by the VAE encoder's asymmetric (0, 1, 0, 1) pad before each
    strided downsampling conv."""
    return ops.pad(input, tuple(pad), mode=mode, value=value)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # pylint: disable=redefined-builtin
               divisor_override=None):
    """Replaces mint.nn.functional.avg_pool2d (kernel "AvgPool2D" unregistered on CPU) with ops.avg_pool2d.

    torch's arguments: `stride=None` means `kernel_size`; `padding` an int or a pair (padH, padW), which
    ops.avg_pool2d wants as (top, bottom, left, right); `divisor_override` is passed only when set (ops'
    "not set" is 0). A 3-D input (C, H, W) is pooled as a batch of one."""
    if stride is None:
        stride = kernel_size
    pad_h, pad_w = _pair(padding)
    kwargs = {} if divisor_override is None else {"divisor_override": divisor_override}
    unbatched = input.ndim == 3
    x = input.expand_dims(0) if unbatched else input
    out = ops.avg_pool2d(x, _pair(kernel_size), _pair(stride), (pad_h, pad_h, pad_w, pad_w),
                         ceil_mode, count_include_pad, **kwargs)
    return out.squeeze(0) if unbatched else out


def repeat_interleave(input, repeats, dim=None, *, output_size=None):  # pylint: disable=redefined-builtin
    """Replaces mint.repeat_interleave (kernels "RepeatInterleaveInt" / "RepeatInterleaveTensor"
    unregistered on CPU), with torch's semantics.

    repeats: an int (every item `repeats` times; ops.repeat_interleave, which runs on CPU) or one count per
    item along `dim` (a list, a tuple or an integer Tensor; a single count is broadcast as torch does):
    ops.gather over the indices `np.repeat(arange(n), repeats)`. `dim=None` repeats the flattened input.
    `output_size`, the expected length along `dim`, is checked against the counts (torch raises too)."""
    if dim is None or input.ndim == 0:
        input, dim = input.reshape(-1), 0 if dim is None else dim
    if not -input.ndim <= dim < input.ndim:
        raise ValueError(f"repeat_interleave: dim {dim} is out of range for a {input.ndim}-D tensor.")
    dim = dim % input.ndim
    size = input.shape[dim]
    if isinstance(repeats, ms.Tensor):
        repeats = repeats.asnumpy()  # torch syncs here too (unless output_size is given)
    counts = np.asarray(repeats)
    counts = counts.astype(np.int64) if counts.size == 0 else counts
    if counts.dtype.kind not in "iu" or counts.ndim > 1:
        raise ValueError(f"repeat_interleave: repeats must be an int or a 1-D sequence of ints, got {repeats!r}.")
    if (counts < 0).any():
        raise ValueError(f"repeat_interleave: repeats must not be negative, got {repeats!r}.")
    if counts.ndim == 1 and counts.size not in (1, size):
        raise ValueError(f"repeat_interleave: {counts.size} repeats for {size} items along dim {dim}; "
                         "give one count per item, or one int for all.")
    each = int(counts.reshape(-1)[0]) if counts.size == 1 else None
    total = size * each if each is not None else int(counts.sum())
    if output_size is not None and int(output_size) != total:
        raise ValueError(f"repeat_interleave: output_size={output_size} but the repeats give {total} "
                         f"along dim {dim}; pass output_size=None or the sum of the repeats.")
    if each is not None and each > 0 and input.dtype != ms.bool_:  # ops.repeat_interleave takes no bool
        return ops.repeat_interleave(input, each, dim)
    index = np.repeat(np.arange(size), counts if each is None else each)
    return ops.gather(input, ms.Tensor(index, ms.int64), dim)


def _tensor_repeat_interleave(self, repeats, dim=None, output_size=None):
    """Tensor.repeat_interleave, on the CPU repeat_interleave above."""
    return repeat_interleave(self, repeats, dim, output_size=output_size)


# --- layers: replacement `construct` methods for the original mint classes -----------------------
def _conv2d_construct(self, input):  # pylint: disable=redefined-builtin
    """mint.nn.Conv2d.construct, on the CPU conv2d above (Conv2DExt / Conv2DPadding have no CPU kernel)."""
    if self.padding_mode != "zeros":
        return conv2d(ops.pad(input, self._reversed_padding, mode=self.padding_mode),
                      self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
    return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _layer_norm_construct(self, input):  # pylint: disable=redefined-builtin
    """mint.nn.LayerNorm.construct, on the CPU layer_norm above (LayerNormExt has no CPU kernel)."""
    return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def _avg_pool2d_construct(self, input):  # pylint: disable=redefined-builtin
    """mint.nn.AvgPool2d.construct, on the CPU avg_pool2d above (AvgPool2D has no CPU kernel)."""
    return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                      self.count_include_pad, self.divisor_override)


def _geglu_construct(self, hidden_states):
    """mindone.diffusers' GEGLU.construct (the SD/SDXL feed-forward) without `Tensor.chunk`, whose primitive
    "Chunk" has no CPU kernel under mindspore.jit: the projection's two halves as slices, the same values."""
    hidden_states = self.proj(hidden_states)
    half = hidden_states.shape[-1] // 2
    return hidden_states[..., :half] * self.gelu(hidden_states[..., half:])


# (owner module or class, attribute, stand-in)
def _replacements():
    return [
        (mint, "arange", arange),
        (mint, "stack", stack),
        (mint, "split", split),
        (mint, "zeros_like", zeros_like),
        (mint, "randn", randn),
        (mint, "baddbmm", baddbmm),
        (mint, "repeat_interleave", repeat_interleave),
        (ms.Tensor, "repeat_interleave", _tensor_repeat_interleave),
        (mint.nn.functional, "gelu", gelu),
        (mint.nn.functional, "conv2d", conv2d),
        (mint.nn.functional, "layer_norm", layer_norm),
        (mint.nn.functional, "pad", pad),
        (mint.nn.functional, "avg_pool2d", avg_pool2d),
        (mint.nn.Conv2d, "construct", _conv2d_construct),
        (mint.nn.LayerNorm, "construct", _layer_norm_construct),
        (mint.nn.AvgPool2d, "construct", _avg_pool2d_construct),
    ]


def _mindone_replacements():
    """The stand-ins on mindone's own classes (importing them imports mindone.diffusers' models)."""
    from mindone.diffusers.models import activations

    return [(activations.GEGLU, "construct", _geglu_construct)]


def install_mindone_layers(import_mindone: bool = True) -> bool:
    """Replace what mindone's own layers call that has no CPU kernel under mindspore.jit (GEGLU's chunk), once
    the stand-ins are in; idempotent, and `uninstall()` puts it back. Needs mindone.diffusers' models: with
    `import_mindone=False` it does nothing unless they are already imported. Returns whether they are in."""
    if not import_mindone and "mindone.diffusers.models.activations" not in sys.modules:
        return False
    try:
        replacements = _mindone_replacements()
    except ImportError:  # no mindone: nothing of it to replace
        return False
    with _LOCK:
        if not _INSTALLED:
            return False
        for owner, name, replacement in replacements:
            if (owner, name) not in _OWN:
                _OWN[(owner, name)] = vars(owner).get(name, _MISSING)
                _ORIGINALS[(owner, name)] = getattr(owner, name)
                setattr(owner, name, replacement)
    return True


def is_cpu() -> bool:
    """Whether MindSpore's device target is CPU."""
    return ms.get_context("device_target") == "CPU"


def install_cpu_kernels(complete_exports: bool = True) -> bool:
    """Install the CPU stand-ins when MindSpore runs on CPU; idempotent. The MindSpore backend calls it
    when it is created (`fewstep.get_backend("mindspore")`, with `complete_exports=False`: it does not
    import mindone); `uninstall()` takes them out again.

    Also turns on `mindspore.runtime.launch_blocking()` on CPU: about 5x faster there, and an op
    without a kernel then fails where it is called instead of later in an unrelated op.
    Call it before importing mindone. With `complete_exports` (the default) it then runs
    `complete_mindone_exports()`, which imports mindone.diffusers, and `install_mindone_layers()` (without
    it, that only when mindone's models are already imported). Returns True when the stand-ins are
    active, False when the device target is not CPU (nothing is changed then)."""
    global _INSTALLED, _EVER_INSTALLED
    if not is_cpu():
        return False
    with _LOCK:
        if not _INSTALLED:
            if not _EVER_INSTALLED and ("mindone.diffusers" in sys.modules or "mindone.transformers" in sys.modules):
                warnings.warn(
                    "install_cpu_kernels() ran after mindone.diffusers or mindone.transformers was imported; "
                    "what mindone built at import time keeps the ops that have no CPU kernel. Call "
                    "fewstep.backends.mindspore_cpu.install_cpu_kernels() before importing mindone.",
                    RuntimeWarning, stacklevel=2)
            ms.runtime.launch_blocking()
            for owner, name, replacement in _replacements():
                # what owner itself held (_MISSING: inherited, e.g. Tensor.repeat_interleave), so that
                # uninstall() puts back exactly that rather than shadowing the inherited one
                _OWN[(owner, name)] = vars(owner).get(name, _MISSING)
                _ORIGINALS[(owner, name)] = getattr(owner, name)
                setattr(owner, name, replacement)
            _INSTALLED = _EVER_INSTALLED = True
    if complete_exports:
        complete_mindone_exports()  # imports mindone.diffusers: only now that the stand-ins are in
    install_mindone_layers(import_mindone=complete_exports)
    return True


def uninstall() -> bool:
    """Take the stand-ins out: every attribute they replaced is the original object again (a method
    the class inherited is inherited again). Returns True when something was put back, False when
    nothing was installed.

    What was built while they were in keeps what it bound then (a mindone GELUActivation stores the
    gelu it found at construction), and mindone's completed exports stay (they are mindone's own
    classes). `launch_blocking()` stays on: the MindSpore backend sets it on CPU anyway."""
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            return False
        for (owner, name), own in _OWN.items():
            if own is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        _OWN.clear()
        _ORIGINALS.clear()
        _INSTALLED = False
    return True


@contextlib.contextmanager
def cpu_kernels(complete_exports: bool = True):
    """`with cpu_kernels(): ...` runs the block with the stand-ins in (on CPU) and takes out on exit
    what it put in: stand-ins that were already installed when the block began stay. Yields what
    `install_cpu_kernels` returns."""
    was_installed = installed()
    active = install_cpu_kernels(complete_exports)
    try:
        yield active
    finally:
        if active and not was_installed:
            uninstall()


def complete_mindone_exports() -> list:
    """Export from `mindone.diffusers` the scheduler classes that `mindone.diffusers.schedulers` has and the
    top level lacks (TCDScheduler in mindone 0.5), as diffusers exports every scheduler; mindone's pipeline
    loader looks a folder's scheduler up there by name. Returns the names added ([] without mindone, or when
    nothing is missing); idempotent. On CPU call `install_cpu_kernels()` first (it calls this): importing
    mindone.diffusers before the stand-ins are in leaves some ops without a CPU kernel."""
    import importlib

    try:
        top = importlib.import_module("mindone.diffusers")
        schedulers = importlib.import_module("mindone.diffusers.schedulers")
    except ImportError:
        return []
    structure = getattr(schedulers, "_import_structure", {})
    names = sorted({n for group in structure.values() for n in group if n.endswith("Scheduler")})
    added = []
    for name in names:
        if hasattr(top, name):  # the lazy module answers False for a name it does not export
            continue
        try:
            cls = getattr(schedulers, name)
        except (AttributeError, ImportError):  # listed but not importable in this install
            continue
        setattr(top, name, cls)
        added.append(name)
    return added


def installed() -> bool:
    """Whether the stand-ins are in now (`install_cpu_kernels` ran and `uninstall` did not since)."""
    return _INSTALLED


def original(owner, name):
    """The op that a stand-in replaced (for tests); the current one when nothing was replaced."""
    return _ORIGINALS.get((owner, name), getattr(owner, name))
