"""What the examples share: their command line, the tiny demo defaults, a test picture, and the guides'
control maps (canny edges, DPT depth).

The scripts beside this file import it as `conditioning` (running `python examples/<script>.py` puts
examples/ on sys.path). Only NumPy, PIL and OpenCV are imported here; a framework only when a depth
model is loaded, and then the one the example runs on.
"""

import argparse

import numpy as np
from PIL import Image

from fewstep.utils import load_image

BACKENDS = ("torch", "mindspore")


# --- command line and defaults ---------------------------------------------------------------------
def example_parser(description, *, model, prompt, output, lora=None, eta=None, image=False):
    """The options every example takes. `model` and `lora` are the ids the guide uses, named in --help;
    `eta` adds TCD's --eta with that default; `image` adds --image and --control-image."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", help=f"pipeline folder or hub id; the guide's is {model} "
                                        f"(default: a tiny random-weight demo model)")
    if lora:
        parser.add_argument("--lora", help=f"a LoRA (file, folder or hub id) to load; the guide's is {lora} "
                                           f"(default: none)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    if image:
        parser.add_argument("--image", help="the picture (path or URL) to take the control map from "
                                            "(default: a generated test picture)")
        parser.add_argument("--control-image", help="a ready control map (path or URL), used as it is")
    parser.add_argument("--prompt", default=prompt)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    if eta is not None:
        parser.add_argument("--eta", type=float, default=eta, help="TCD's gamma: 0 deterministic, more adds detail")
    parser.add_argument("-o", "--output", default=output)
    return parser


def pipeline_folder(args, kind):
    """--model, or the tiny demo pipeline of `kind` ("sd15", "sdxl", ...), built offline on first use."""
    if args.model:
        return args.model
    from fewstep.testing import tiny_pipeline

    folder = tiny_pipeline(kind)
    print(f"No --model: using a tiny random-weight demo model ({folder}); its images are noise.")
    return folder


def component(args, given, guide_id, tiny):
    """The folder or hub id of a component: `given` (its option) if set; the guide's `guide_id` with
    --model; else `tiny()`, the tiny demo component that fits the tiny pipeline."""
    if given:
        return given
    return guide_id if args.model else tiny()


def native_size(pipe):
    """The model's default output side in pixels (1024 for SDXL, 512 for SD 1.5, 64 for the tiny ones)."""
    return pipe.unet.config["sample_size"] * pipe.vae_scale_factor


def save(image, args):
    """Write `image` to --output and say what was made."""
    image.save(args.output)
    print(f"wrote {args.output} ({image.width}x{image.height}, seed {args.seed}, {args.backend})")


# --- input pictures --------------------------------------------------------------------------------
def demo_picture(size):
    """A size x size RGB picture made in code, so the examples run offline: a colour gradient with a
    disc and a rectangle on it, which give a canny map edges and a depth model shapes to find."""
    x, y = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    rgb = np.dstack([x, y, np.full_like(x, 128)])
    rows, cols = np.mgrid[:size, :size] / size
    rgb[(cols - 0.35) ** 2 + (rows - 0.4) ** 2 < 0.2 ** 2] = (240, 220, 40)
    rgb[(rows > 0.55) & (rows < 0.85) & (cols > 0.5) & (cols < 0.9)] = (30, 60, 200)
    return Image.fromarray(rgb.astype(np.uint8))


def picture(path, size=None):
    """The picture at `path` (a file or URL) through load_image, resized to size x size when given."""
    image = load_image(path)
    return image.resize((size, size)) if size else image


def control_image(args, detect, size, detect_at=None):
    """The control map: --control-image as it is; else `detect` run on --image (resized to
    `detect_at` x `detect_at` when given, as a guide does) or on the test picture, then resized to
    size x size if it has another size."""
    if args.control_image:
        return load_image(args.control_image)
    source = picture(args.image, detect_at) if args.image else demo_picture(detect_at or size)
    image = detect(source)
    return image if image.size == (size, size) else image.resize((size, size))


# --- control maps ----------------------------------------------------------------------------------
def canny(image, low_threshold=100, high_threshold=200):
    """The guides' canny map: cv2.Canny edges of the RGB picture, stacked to 3 channels, as PIL."""
    import cv2

    edges = cv2.Canny(np.array(image), low_threshold, high_threshold)[:, :, None]
    return Image.fromarray(np.concatenate([edges, edges, edges], axis=2))


def depth_estimator(model, backend):
    """The TCD guide's `get_depth_map(image, size)` for a DPT model (folder or hub id, the guide's is
    Intel/dpt-hybrid-midas): DPTImageProcessor (transformers, framework-free) and DPTForDepthEstimation
    from transformers on torch or from mindone.transformers on MindSpore."""
    from transformers import DPTImageProcessor

    feature_extractor = DPTImageProcessor.from_pretrained(model)
    if backend == "torch":
        import torch
        from transformers import DPTForDepthEstimation

        net = DPTForDepthEstimation.from_pretrained(model).eval()

        def predict(pixels):
            with torch.no_grad():
                return net(torch.from_numpy(pixels), return_dict=False)[0].numpy()
    else:
        from fewstep.backends.mindspore_cpu import install_cpu_kernels

        install_cpu_kernels()  # before mindone is imported: mindone binds the mint ops it uses at import
        import mindspore
        from mindone.transformers import DPTForDepthEstimation

        net = DPTForDepthEstimation.from_pretrained(model)
        net.set_train(False)

        def predict(pixels):
            return net(mindspore.Tensor(pixels), return_dict=False)[0].asnumpy()

    def get_depth_map(image, size):
        pixels = feature_extractor(images=image, return_tensors="np").pixel_values
        depth = predict(pixels)[0].astype(np.float64)  # (h, w), relative inverse depth
        # The guide resizes with torch.nn.functional.interpolate(mode="bicubic", align_corners=False).
        # MindSpore has no CPU kernel for it ("The kernel UpsampleBicubic2D unregistered."), so the
        # resize and the normalisation are done here, in NumPy, on both backends: the same formula as
        # torch's, so both frameworks see the same map, and torch's own within float rounding.
        depth = _bicubic(depth, size, size)
        low, high = depth.min(), depth.max()
        depth = (depth - low) / (high - low) if high > low else np.zeros_like(depth)  # a flat map has no depth
        return Image.fromarray((np.dstack([depth] * 3) * 255.0).clip(0, 255).astype(np.uint8))

    return get_depth_map


def _bicubic(array, height, width):
    """A 2-D array resized as torch's interpolate(mode="bicubic", align_corners=False) does it:
    separable cubic convolution (a = -0.75), source pixels clamped at the borders."""
    return _cubic_weights(array.shape[0], height) @ array @ _cubic_weights(array.shape[1], width).T


def _cubic_weights(n_in, n_out, a=-0.75):
    """(n_out, n_in) matrix: each output sample as a weighted sum of its 4 nearest inputs."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # output pixel centres in input coordinates
    left = np.floor(x)
    t = x - left

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    taps = np.clip(left[:, None].astype(int) + np.arange(-1, 3), 0, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out), 4).reshape(n_out, 4), taps), weights)
    return matrix
