"""`--canny` / `--depth`: a plain picture made into a control image the way diffusers' ControlNet and TCD
guides make it, so a guide's command gives the guide's conditioning."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

# The depth ControlNet guides' estimator (diffusers' SDXL depth ControlNet and TCD guides): DPT-Hybrid MiDaS.
DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"
MODES = ("canny", "depth")


def canny(image):
    """The guides' edges: `cv2.Canny(np.array(image), 100, 200)` stacked to 3 channels."""
    import numpy as np
    from PIL import Image

    try:
        import cv2  # lazily: only --canny needs OpenCV
    except ImportError as err:
        raise ValueError("--canny needs OpenCV: pip install opencv-python (or fewstep[test]).") from err
    edges = cv2.Canny(np.array(image), 100, 200)[:, :, None]
    return Image.fromarray(np.concatenate([edges, edges, edges], axis=2))


class _Depth:
    """transformers' depth-estimation pipeline (it runs on torch, whatever the generation backend), loaded
    once for all the images of a run."""

    def __init__(self, model: str):
        try:
            from transformers import pipeline  # lazily: only --depth needs transformers (and torch)
        except ImportError as err:
            raise ValueError("--depth needs transformers and torch: pip install 'fewstep[torch]'.") from err
        self.estimator = pipeline("depth-estimation", model=model)

    def __call__(self, image):
        """The guides' depth map: the pipeline's `depth` picture stacked to 3 channels."""
        import numpy as np
        from PIL import Image

        depth = np.array(self.estimator(image)["depth"])[:, :, None]
        return Image.fromarray(np.concatenate([depth, depth, depth], axis=2))


def prepare(paths: Sequence[str], mode: Optional[str], depth_model: Optional[str] = None) -> List:
    """The control images for these files: loaded as RGB (fewstep.utils.load_image), then edges or depth
    when `mode` asks. The same file given twice is read and converted once."""
    from fewstep.utils import load_image

    if mode not in (None,) + MODES:
        raise ValueError(f"Unknown control image conversion {mode!r}; use one of {', '.join(MODES)}.")
    convert = {"canny": canny, None: lambda image: image}.get(mode)
    if mode == "depth":
        convert = _Depth(depth_model or DEFAULT_DEPTH_MODEL)
    done: Dict[str, object] = {}
    for path in paths:
        if path not in done:
            done[path] = convert(load_image(path))
    return [done[path] for path in paths]
