"""Paths as the command line records them."""

from __future__ import annotations

import os
from typing import Optional


def local_path(value: Optional[str]) -> Optional[str]:
    """An existing local path made absolute (so a saved record replays from any folder); hub ids as given."""
    if value is not None and os.path.exists(value):
        return os.path.abspath(value)
    return value
