"""What a component folder's weight files hold, from their safetensors headers alone (no tensor data is
read): the files of each variant (`model.fp16.safetensors` is the "fp16" variant, shards included), the
dtypes of their tensors and the parameter count; pickled weight files are listed, never opened."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Dict, Iterable, List, Mapping

import numpy as np

from fewstep.core.lora import read_header

# safetensors dtype names as torch and NumPy spell them (what a user passes as dtype=)
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
               "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
               "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # diffusers' / transformers' shard suffix before the extension


def dtype_name(safetensors_dtype: str) -> str:
    return DTYPE_NAMES.get(safetensors_dtype, safetensors_dtype)


def variant_of(filename: str) -> str:
    """The variant a weight file belongs to: "" for `model.safetensors`, "fp16" for
    `model.fp16.safetensors` or `model.fp16-00001-of-00002.safetensors`."""
    stem = filename.rsplit(".", 1)[0]
    parts = _SHARD.sub("", stem).split(".")
    return parts[-1] if len(parts) > 1 else ""


def summarise(entries: Iterable) -> dict:
    """{dtype, dtypes, parameters} of header entries ((safetensors dtype, shape, ...) tuples: read_header's
    TensorInfo, checkpoint_tensors' values). `dtype` is the floating dtype most parameters have (what a
    model "is"), `dtypes` counts tensors per dtype."""
    tensors: Counter = Counter()
    params: Counter = Counter()
    for entry in entries:
        name = dtype_name(entry[0])
        tensors[name] += 1
        params[name] += int(np.prod(entry[1], dtype=np.int64))
    floating = [(n, c) for n, c in params.most_common() if n.startswith(("float", "bfloat"))]
    main = (floating or params.most_common() or [(None, 0)])[0][0]
    return {"dtype": main, "dtypes": dict(sorted(tensors.items())), "parameters": int(sum(params.values()))}


def weight_files(folder: str) -> Dict[str, List[str]]:
    """variant -> its safetensors file names in a folder (sorted; "" is the plain weights)."""
    found: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors") and os.path.isfile(os.path.join(folder, name)):
            found.setdefault(variant_of(name), []).append(name)
    return found


def folder_weights(folder: str) -> dict:
    """{variants: {variant: {files, dtype, dtypes, parameters}}, pickled: [file names]} of a component folder."""
    variants = {}
    for variant, names in weight_files(folder).items():
        entries = [e for n in names for e in read_header(os.path.join(folder, n)).tensors.values()]
        variants[variant] = {"files": names, **summarise(entries)}
    pickled = sorted(n for n in os.listdir(folder) if n.endswith(PICKLE_SUFFIXES))
    return {"variants": variants, "pickled": pickled}


def main_weights(weights: Mapping) -> dict:
    """The weights a plain `from_pretrained` loads: the plain files, else the only variant there is."""
    variants = weights["variants"]
    if "" in variants:
        return variants[""]
    return next(iter(variants.values())) if len(variants) == 1 else {}
