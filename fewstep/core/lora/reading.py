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
import math
import os
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from fewstep.core.lora.errors import LoraError

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# bytes per element of every safetensors dtype, also those fewstep does not read as arrays (a header read
# must still check their offsets, e.g. the float8 weights of some checkpoints)
_ITEMSIZES = {**{name: np.dtype(dtype).itemsize for name, dtype in _DTYPES.items()},
              "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit on the JSON header


class LoraSource(NamedTuple):
    tensors: Dict[str, np.ndarray]
    metadata: Dict[str, str]   # the safetensors "__metadata__" (empty for a state dict)
    origin: str                # what was read, for error messages


class TensorInfo(NamedTuple):
    dtype: str                 # the safetensors dtype name ("F16", "BF16", ...)
    shape: Tuple[int, ...]
    begin: int                 # byte range in the data section (which starts after the header)
    end: int


class SafetensorsHeader(NamedTuple):
    tensors: Dict[str, TensorInfo]
    metadata: Dict[str, str]
    data_start: int            # file offset of the data section


def read_header(path: str) -> SafetensorsHeader:
    """The header of a safetensors file (every tensor's dtype, shape and byte range, and the metadata),
    read without reading any tensor data; checked against the file's size, so a truncated or corrupt
    file is reported here. Raises LoraError naming the file."""
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
            except RecursionError:
                raise LoraError(f"{path} is corrupt: its safetensors header is nested too deeply.") from None
    except OSError as err:
        raise LoraError(f"Cannot read the safetensors file {path}: {err}") from err
    if not isinstance(header, dict):
        raise LoraError(f"{path} is corrupt: its safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    tensors = {name: _entry(path, name, info, data_size) for name, info in header.items()}
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + length)


def _entry(path: str, name: str, info: Any, data_size: int) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError) as err:
        raise LoraError(f"{path} is corrupt: the header entry of tensor {name!r} is malformed ({info!r}).") from err
    itemsize = _ITEMSIZES.get(dtype)
    if min(shape, default=0) < 0 or not 0 <= begin <= end or (
            itemsize is not None and end - begin != math.prod(shape) * itemsize):  # exact: np.prod wraps at 2**63
        raise LoraError(f"{path} is corrupt: tensor {name!r} ({dtype}, shape {list(shape)}) has data offsets "
                        f"{begin}..{end}.")
    if end > data_size:
        raise LoraError(
            f"{path} is truncated: tensor {name!r} needs bytes {begin}..{end} of the data section, which has only "
            f"{data_size}. Download the file again."
        )
    return TensorInfo(dtype, shape, begin, end)


def read_safetensors(path: str, names: Optional[Iterable[str]] = None):
    """(tensors, metadata) of a safetensors file; bfloat16 tensors are returned as float32.

    `names`: read only these tensors (seeking to each; e.g. a LoRA's alphas without its factors)."""
    header = read_header(path)
    wanted = header.tensors if names is None else {name: header.tensors[name] for name in names}
    for name, info in wanted.items():
        if info.dtype not in _DTYPES:
            raise LoraError(f"{path}: tensor {name!r} has dtype {info.dtype}, which fewstep does not read as a LoRA "
                            f"factor.")
    try:
        with open(path, "rb") as f:
            if names is None:
                f.seek(header.data_start)
                data = np.fromfile(f, dtype=np.uint8)
                return {name: _array(data[i.begin:i.end], i) for name, i in wanted.items()}, header.metadata
            tensors = {}
            for name, info in wanted.items():
                f.seek(header.data_start + info.begin)
                tensors[name] = _array(np.frombuffer(f.read(info.end - info.begin), dtype=np.uint8).copy(), info)
            return tensors, header.metadata
    except OSError as err:
        raise LoraError(f"Cannot read the safetensors file {path}: {err}") from err


def _array(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.dtype == "BF16":
        # bfloat16 is the top half of a float32: widening is exact.
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    arr = raw.view(_DTYPES[info.dtype]).reshape(info.shape)
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
