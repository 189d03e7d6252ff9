"""Where a comparison ran: library versions, thread counts, platform. Reads only what is already
imported (sys.modules), so asking imports no framework."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict

LIBRARIES = ("fewstep", "numpy", "torch", "diffusers", "transformers", "mindspore", "mindone", "safetensors")


def environment() -> Dict[str, Any]:
    versions = {name: getattr(sys.modules[name], "__version__", "?") for name in LIBRARIES if name in sys.modules}
    threads: Dict[str, Any] = {"cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        threads["torch"] = torch.get_num_threads()
    ms = sys.modules.get("mindspore")
    if ms is not None:
        try:
            threads["mindspore"] = ms.get_context("runtime_num_threads")
        except Exception:  # an older MindSpore without this context key
            threads["mindspore"] = "?"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            threads[var] = os.environ[var]
    return {"versions": versions, "threads": threads, "python": platform.python_version(),
            "platform": platform.platform()}
