"""Shared inputs for the pipeline tests: the tiny folders, the test pictures and the call cases."""

from __future__ import annotations

import numpy as np
import PIL.Image

SIZE = 64  # pixels; a multiple of every tiny VAE's factor


def picture(seed: int = 0, size: int = SIZE) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                     rng.uniform(0, 255, (size, size))], axis=-1)
    return PIL.Image.fromarray(base.astype(np.uint8))


def mask(size: int = SIZE) -> PIL.Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return PIL.Image.fromarray(m)


# (scheduler, eta, guidance_scale, negative_prompt): TCD deterministic and stochastic, LCM; CFG off
# at 0 and 1, on above 1 with a negative prompt.
CASES = [
    ("tcd", 0.0, 0.0, None),
    ("tcd", 0.3, 1.0, None),
    ("lcm", 0.0, 0.0, None),
    ("tcd", 0.3, 3.0, "blurry"),
    ("lcm", 0.0, 2.0, "blurry"),
]
