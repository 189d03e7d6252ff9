"""Run as a script by tests/test_pipeline_object.py, in a fresh process: load every tiny pipeline and adapter
on the backends named in argv, the tiny single-file checkpoints (fewstep's from_single_file, which hands
torch_dtype / mindspore_dtype to diffusers' / mindone's), and the parity reference sides (from a folder and
from a checkpoint), and print, as JSON, every line that mentions "deprecated" which fewstep's loading caused.

A fresh process, because transformers' `logger.warning_once` says a thing once per process: a warning
caused earlier in a test session would hide one caused here. Everything a library prints at import
(MindSpore's and mindone's own chatter) happens before the capture starts: all the frameworks and the
library classes loading reaches are imported first; only then are warnings, log records and the stdout
/ stderr file descriptors (MindSpore's C++ logger writes to fd 2 directly) captured around the loads.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings

import fewstep
from fewstep.testing import KINDS, tiny_checkpoint, tiny_controlnet, tiny_pipeline, tiny_t2i_adapter
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from fewstep.testing.tiny_motion import tiny_motion_adapter


@contextlib.contextmanager
def captured(lines: list):
    """Collect warnings, log records of every logger, and whatever reaches fd 1 and fd 2."""
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Handler(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    # transformers' and mindone's loggers do not propagate to the root: attach to each known logger too
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if "." not in n]
    for lg in loggers:
        lg.addHandler(handler)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for lg in loggers:
                lg.removeHandler(handler)
            root.removeHandler(handler)
            sink.seek(0)
            text = sink.read().decode(errors="replace") + buffer.getvalue()
            lines += [str(w.message) for w in caught] + records + text.splitlines()


# the library pipelines whose from_single_file the single-file loads call
SINGLE_FILE_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionInpaintPipeline")


def import_everything(backends):
    """Import the frameworks and every library class loading reaches (their import chatter is not ours)."""
    import diffusers
    import transformers

    for name in ("StableDiffusionPipeline", "UNet2DConditionModel", "AutoencoderKL", "ControlNetModel", "T2IAdapter",
                 "MotionAdapter", "UNetMotionModel", "AutoPipelineForText2Image", *SINGLE_FILE_CLASSES):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection", "CLIPTokenizer"):
        getattr(transformers, name)
    if "mindspore" in backends:
        from fewstep.backends.mindspore_cpu import install_cpu_kernels

        install_cpu_kernels()
        import mindone.diffusers as md
        import mindone.transformers as mt

        for name in ("StableDiffusionPipeline", "UNet2DConditionModel", "AutoencoderKL", "ControlNetModel",
                     "T2IAdapter", "MotionAdapter", "UNetMotionModel", "AutoPipelineForText2Image", *SINGLE_FILE_CLASSES):
            getattr(md, name)
        for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection"):
            getattr(mt, name)
        fewstep.get_backend("mindspore")


def load_all(backend: str) -> None:
    for kind in KINDS:
        fewstep.DiffusionPipeline.from_pretrained(tiny_pipeline(kind), backend=backend, dtype="float32")
    fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"), backend=backend)
    fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15"), backend=backend)
    motion = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter(), backend=backend)
    fewstep.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), backend=backend, motion_adapter=motion)
    for kind in IP_ADAPTER_FILES:
        pipe = fewstep.AutoPipelineForText2Image.from_pretrained(tiny_pipeline(kind), backend=backend)
        sub, name = IP_ADAPTER_FILES[kind]["plain"]
        pipe.load_ip_adapter(tiny_ip_adapter(kind), subfolder=sub, weight_name=name)


# the single-file checkpoints the issue names: SD 1.5 and SDXL (one and two text encoders) and SD inpainting
SINGLE_FILES = ("sd15", "sdxl", "sd15-inpaint")


def load_single_files(backend: str) -> None:
    for kind in SINGLE_FILES:
        fewstep.DiffusionPipeline.from_single_file(tiny_checkpoint(kind), backend=backend, config=tiny_pipeline(kind))


def load_reference_sides(backend: str) -> None:
    from fewstep.parity.sides import load_side

    library = "diffusers" if backend == "torch" else "mindone"
    load_side(tiny_pipeline("sdxl"), library=library)
    load_side(tiny_checkpoint("sdxl"), library=library, config=tiny_pipeline("sdxl"))  # the library's from_single_file


def main(backends):
    for kind in KINDS:  # build the folders (with torch) before the capture: building is not loading
        tiny_pipeline(kind)
    for kind in SINGLE_FILES:
        tiny_checkpoint(kind)
    tiny_controlnet("sd15"), tiny_t2i_adapter("sd15"), tiny_motion_adapter()
    for kind in IP_ADAPTER_FILES:
        tiny_ip_adapter(kind)
    import_everything(backends)
    lines = []
    with captured(lines):
        for backend in backends:
            load_all(backend)
            load_single_files(backend)
            load_reference_sides(backend)
    # the capture itself is checked: the old way of passing the dtype must be caught
    probe = []
    with captured(probe):
        import torch
        import transformers

        folder = os.path.join(tiny_pipeline("sd15"), "text_encoder")
        transformers.CLIPTextModel.from_pretrained(folder, torch_dtype=torch.float32)
    print(json.dumps({"deprecated": [line for line in lines if "deprecated" in line.lower()],
                      "probe": [line for line in probe if "deprecated" in line.lower()]}))


if __name__ == "__main__":
    main(sys.argv[1:])
