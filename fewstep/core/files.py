"""The one way fewstep writes a file: whole or not at all, never through a link.

A temporary file is created in the target's own folder under an unpredictable name (`tempfile.mkstemp`: O_EXCL,
so nothing planted there is opened, and no link is followed), filled, flushed to disk (fsync), then renamed onto
the target with `os.replace`, which replaces a link standing at the target instead of writing through it. A
reader sees the old file or the new one, never half of one; a failure (an exception, Ctrl-C, a full disk) removes
the temporary file and leaves the target as it was.

Every temporary name starts with TEMP_PREFIX, which `fewstep batch` refuses as the start of an item id, so no
output can ever be taken for a leftover. The standard library only (it lives in core so that every layer may use it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator, Optional

TEMP_PREFIX = ".fewstep-tmp-"


@contextlib.contextmanager
def atomic_path(path: str, suffix: Optional[str] = None) -> Iterator[str]:
    """Yield the path of a new, empty temporary file next to `path` for a writer that wants a file name (PIL,
    GIF / MP4 encoders); once the block ends it is synced and renamed onto `path`. `suffix` defaults to `path`'s
    extension, which such writers read to choose the format."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(name)[1]
    handle, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # the permissions open() would have given; mkstemp makes it private
        yield temp
        _fsync(temp)
        os.replace(temp, path)
        _fsync_folder(folder)
    finally:
        if os.path.lexists(temp):
            os.remove(temp)


def write_with(path: str, write: Callable[[Any], None], mode: str = "wb") -> str:
    """Call `write(f)` on an open temporary file (`mode` "wb" or "w", UTF-8 text) and move it onto `path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(path) as temp:
        with open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
    return os.path.abspath(path)


def write_bytes(path: str, data: bytes) -> str:
    return write_with(path, lambda f: f.write(data), "wb")


def write_text(path: str, text: str) -> str:
    return write_with(path, lambda f: f.write(text), "w")


def write_json(path: str, value: Any, **dump_options) -> str:
    """`value` as strict JSON (a NaN or infinity is an error, not the bare `NaN` that is not JSON), newline-ended."""
    dump_options.setdefault("allow_nan", False)
    return write_text(path, json.dumps(value, **dump_options) + "\n")


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
    # the rename itself is on disk only once the folder is; not every file system can open a folder
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
