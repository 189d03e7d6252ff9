"""Single-file checkpoints through each framework's own loader: diffusers' `<Pipeline>.from_single_file` on
torch, mindone.diffusers' (its port, in mindone 0.5.0) on MindSpore. The library converts the original
(LDM / SGM) names to its models with the config folder it is given; fewstep only wraps what it returns.

The caller (fewstep.pipelines.single_file) has already read the header, refused pickles and resolved
`config` to a local folder, so the library never reaches for the hub here.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Dict, Iterable, Optional

from fewstep.backends import get_backend

# the backend's port of diffusers, whose pipeline classes carry from_single_file
_LIBRARIES = {"torch": "diffusers", "mindspore": "mindone.diffusers"}
_TOKENIZERS = ("tokenizer", "tokenizer_2")


def load_single_file(backend: str, pipeline: str, path: str, config: str, names: Iterable[str],
                     given: Dict[str, object], dtype: str = "float32",
                     device: Optional[str] = None) -> Dict[str, object]:
    """Load a single-file checkpoint with `<library>.<pipeline>.from_single_file(path, config=config)` and return
    the components named in `names` as the library loaded them (the caller wraps the models, as it wraps models
    passed to from_pretrained).

    `given` holds the components the caller already has (fewstep components or lists of them, e.g. the
    ControlNets); their models are handed to the library so it builds the pipeline around them instead of
    loading them."""
    names = list(names)
    loaded = library_pipeline(backend, pipeline, path, config, names + list(given), given, dtype=dtype)
    out = {name: getattr(loaded, name) for name in names}
    if device and get_backend(backend).name == "torch":
        for name, value in out.items():
            if name not in _TOKENIZERS:
                value.to(device)
    return out


def library_pipeline(backend: str, pipeline: str, path: str, config: str, names: Iterable[str],
                     given: Optional[Dict[str, object]] = None, dtype: str = "float32"):
    """The library's own `<pipeline>` (diffusers' on torch, mindone.diffusers' on MindSpore) from a single-file
    checkpoint with `config` a local diffusers-format folder: what `load_single_file` takes its components from,
    and the reference side of `fewstep parity` on a checkpoint.

    `names` are the components wanted; the library's optional ones outside them (safety checker, image encoder,
    feature extractor) are passed as None so it neither loads them from `config` nor warns that they are missing."""
    ops = get_backend(backend)
    if ops.name == "numpy":
        raise ValueError("The numpy backend runs schedulers only; load checkpoints with backend='torch' or "
                         "'mindspore'.")
    dtype_kwargs = _prepare(ops.name, dtype)
    library = importlib.import_module(_LIBRARIES[ops.name])
    cls = getattr(library, pipeline)
    passed = {name: _raw(value) for name, value in (given or {}).items()}
    # Without this, a config folder that lists an image encoder (one saved after load_ip_adapter) makes the library
    # fail: it looks for that transformers model's weights under diffusers' file names only. fewstep has no
    # safety checker: saying so where the class takes one keeps a hub config that asks for it (SD 1.5's) from
    # warning that it is missing.
    accepted = inspect.signature(cls.__init__).parameters
    wanted = set(names) | set(passed)
    passed.update({n: None for n in getattr(cls, "_optional_components", ()) if n in accepted and n not in wanted})
    if "requires_safety_checker" in accepted:
        passed["requires_safety_checker"] = False
    with _quiet_progress(library), (_embedding_weight() if ops.name == "mindspore" else contextlib.nullcontext()):
        return cls.from_single_file(path, config=config, local_files_only=True, **dtype_kwargs, **passed)


def _prepare(backend: str, dtype: str) -> dict:
    """The library's dtype keyword; on MindSpore, the CPU kernels first (mindone binds mint ops at import)."""
    if backend == "torch":
        from fewstep.backends.torch_backend import TORCH_DTYPES

        return {"torch_dtype": TORCH_DTYPES.native(dtype)}
    from fewstep.backends.mindspore_backend import MS_DTYPES
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()
    return {"mindspore_dtype": MS_DTYPES.native(dtype)}


def _raw(value):
    """The library's own model inside a fewstep component (lists item by item); tokenizers as they are."""
    if isinstance(value, (list, tuple)):
        return [_raw(v) for v in value]
    return getattr(value, "module", value)


@contextlib.contextmanager
def _quiet_progress(library):
    """No "Loading pipeline components..." bar from the library during the load, and its setting restored after:
    fewstep's own callers (the CLI) decide what is printed."""
    logging = importlib.import_module(f"{library.__name__}.utils.logging")
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _embedding_weight():
    """mindone 0.5.0's single-file CLIP loader (`create_diffusers_clip_model_from_ldm`) reads
    `text_model.embeddings.position_embedding.weight`, but its CLIP port builds that layer as
    `mindspore.nn.Embedding`, whose table is `embedding_table`: every checkpoint with a text encoder fails with
    AttributeError. For the duration of the load the table is also readable as `.weight` (read only, the same
    Parameter); a MindSpore whose Embedding has a `weight` of its own is left alone."""
    from mindspore import nn

    if hasattr(nn.Embedding, "weight"):
        yield
        return
    nn.Embedding.weight = property(lambda cell: cell.embedding_table)
    try:
        yield
    finally:
        del nn.Embedding.weight
