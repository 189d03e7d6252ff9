"""Reading LoRA weights as NumPy arrays: a safetensors file, a folder holding one, or a state dict.

The safetensors format is small enough to read directly (8-byte little-endian header length, a JSON
header of {name: {dtype, shape, data_offsets}} plus "__metadata__", then the raw data), and reading
it here rather than through `safetensors.numpy` buys two things LoRA files need: bfloat16 tensors
(common in LoRA files, and refused by the NumPy loader because NumPy has no bfloat16) come back as
float32, exactly; and a truncated or corrupt file fails with a message naming the file and the
tensor, before anything is loaded into a model.

The data region is read into memory once, not memory-mapped: a LoRA file replaced on disk while its
adapter is loaded must not change the loaded factors.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional

import numpy as np

from fewstep.core.lora.errors import LoraError

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit on the JSON header


class LoraSource(NamedTuple):
    tensors: Dict[str, np.ndarray]
    metadata: Dict[str, str]   # the safetensors "__metadata__" (empty for a state dict)
    origin: str                # what was read, for error messages


def read_safetensors(path: str):
    """(tensors, metadata) of a safetensors file; bfloat16 tensors are returned as float32."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoraError(f"{path} is not a safetensors file: it is only {size} bytes long.")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise LoraError(
                    f"{path} is truncated or not a safetensors file: its header claims {length} bytes but the file "
                    f"has {size}. Pickled .bin/.pt/.ckpt LoRAs are not read (loading a pickle can run code): load "
                    f"one with torch.load and pass the state dict instead."
                )
            try:
                header = json.loads(f.read(length).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                raise LoraError(f"{path} is corrupt: its safetensors header is not valid JSON ({err}).") from err
            data = np.fromfile(f, dtype=np.uint8)
    except OSError as err:
        raise LoraError(f"Cannot read the LoRA file {path}: {err}") from err
    if not isinstance(header, dict):
        raise LoraError(f"{path} is corrupt: its safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _tensor(path, name, info, data) for name, info in header.items()}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor(path: str, name: str, info: Any, data: np.ndarray) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError) as err:
        raise LoraError(f"{path} is corrupt: the header entry of tensor {name!r} is malformed ({info!r}).") from err
    if dtype not in _DTYPES:
        raise LoraError(f"{path}: tensor {name!r} has dtype {dtype}, which fewstep does not read as a LoRA factor.")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != int(np.prod(shape)) * itemsize:
        raise LoraError(f"{path} is corrupt: tensor {name!r} ({dtype}, shape {shape}) has data offsets {begin}..{end}.")
    if end > data.size:
        raise LoraError(
            f"{path} is truncated: tensor {name!r} needs bytes {begin}..{end} of the data section, which has only "
            f"{data.size}. Download the file again."
        )
    raw = data[begin:end]
    if dtype == "BF16":
        # bfloat16 is the top half of a float32: widening is exact.
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    arr = raw.view(_DTYPES[dtype]).reshape(shape)
    return arr if arr.flags.aligned else arr.copy()


def find_weight_file(folder: str, weight_name: Optional[str] = None) -> str:
    """The LoRA file in a folder: `weight_name` if given, else diffusers' default name, else the only
    .safetensors file there."""
    if weight_name:
        path = os.path.join(folder, weight_name)
        if not os.path.isfile(path):
            raise LoraError(f"{folder!r} has no file {weight_name!r}.")
        return path
    default = os.path.join(folder, DEFAULT_WEIGHT_NAME)
    if os.path.isfile(default):
        return default
    candidates = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if len(candidates) == 1:
        return os.path.join(folder, candidates[0])
    if not candidates:
        raise LoraError(f"{folder!r} holds no .safetensors file; pass the LoRA file itself, or weight_name=.")
    raise LoraError(f"{folder!r} holds several .safetensors files ({', '.join(candidates)}); choose one with weight_name=.")


def read_lora(source: Any, weight_name: Optional[str] = None) -> LoraSource:
    """A LoRA as NumPy arrays from a safetensors file, a folder (+ `weight_name`) or a mapping of
    name -> NumPy array (framework tensors are converted by the caller, which knows the backend)."""
    if isinstance(source, Mapping):
        tensors = {}
        for key, value in source.items():
            if not isinstance(key, str) or not isinstance(value, np.ndarray):
                raise LoraError(
                    f"State dict entry {key!r} is a {type(value).__name__}; LoRA state dicts map names to arrays "
                    f"(NumPy, torch or MindSpore tensors)."
                )
            # a copy: the caller's arrays may change later, and backends share memory with NumPy arrays
            tensors[key] = np.array(value, copy=True)
        return LoraSource(tensors, {}, "the state dict")
    if not isinstance(source, (str, os.PathLike)):
        raise LoraError(
            f"Cannot load a LoRA from a {type(source).__name__}; pass a .safetensors file, a folder, a hub id or a "
            f"state dict."
        )
    path = os.fspath(source)
    if os.path.isdir(path):
        path = find_weight_file(path, weight_name)
    elif not os.path.isfile(path):
        raise LoraError(f"LoRA file {path!r} does not exist.")
    tensors, metadata = read_safetensors(path)
    return LoraSource(tensors, metadata, path)
