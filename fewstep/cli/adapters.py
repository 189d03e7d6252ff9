"""Adapter flags: ControlNets, a T2I-Adapter, an IP-Adapter and AnimateDiff's motion adapter.

The flags become a JSON-ready record (settings.py saves and replays it); from the record come the
components passed to the pipeline (which also pick its class, with the task, through the factory's table:
a ControlNet with --image / --mask is the ControlNet img2img / inpainting pipeline, with --frames
AnimateDiffControlNetPipeline), the IP-Adapter load, and the call's conditioning arguments, named as that
class names them.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

from fewstep.cli import logs
from fewstep.cli.paths import local_path

IP_SUFFIXES = (".safetensors", ".bin")


def add_adapter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlnet", action="append", metavar="PATH_OR_ID",
                   help="a ControlNet folder or hub id; repeat for several (the i-th --control-image and "
                        "--control-scale go with the i-th --controlnet)")
    p.add_argument("--control-image", action="append", metavar="IMG",
                   help="the conditioning image of a --controlnet (with --image / --mask it conditions the img2img / "
                        "inpainting of that picture; with --frames N the same picture conditions every frame)")
    p.add_argument("--control-scale", action="append", type=float, metavar="S",
                   help="controlnet_conditioning_scale of a --controlnet (default 1.0)")
    p.add_argument("--t2i-adapter", metavar="PATH_OR_ID", help="a T2I-Adapter folder or hub id")
    p.add_argument("--adapter-image", metavar="IMG", help="the conditioning image of the --t2i-adapter")
    p.add_argument("--adapter-scale", type=float, metavar="S",
                   help="adapter_conditioning_scale of the --t2i-adapter (default 1.0)")
    p.add_argument("--ip-adapter", metavar="PATH_OR_ID[:SUBFOLDER/WEIGHT_NAME]",
                   help="an IP-Adapter file, or a folder / hub id with the file in it "
                        "(e.g. h94/IP-Adapter:sdxl_models/ip-adapter_sdxl.safetensors)")
    p.add_argument("--ip-image", metavar="IMG", help="the image prompt of the --ip-adapter")
    p.add_argument("--ip-scale", type=float, metavar="S", help="set_ip_adapter_scale (default 1.0)")
    conversion = p.add_mutually_exclusive_group()
    conversion.add_argument("--canny", action="store_true",
                            help="make every --control-image / --adapter-image into OpenCV Canny edges (100, 200), "
                                 "as the guides do")
    conversion.add_argument("--depth", action="store_true",
                            help="make every --control-image / --adapter-image into a depth map "
                                 "(transformers' depth-estimation pipeline, as the guides do)")
    p.add_argument("--depth-model", default=None, metavar="PATH_OR_ID",
                   help="the --depth estimator (default Intel/dpt-hybrid-midas)")


def _ip_source(text: str) -> dict:
    """`PATH_OR_ID[:SUBFOLDER/WEIGHT_NAME]`, or a local IP-Adapter file."""
    if os.path.isfile(text):
        return {"source": os.path.dirname(os.path.abspath(text)), "subfolder": None,
                "weight_name": os.path.basename(text)}
    base, colon, tail = text.rpartition(":")
    if not (colon and base and tail.endswith(IP_SUFFIXES)):
        raise ValueError(f"--ip-adapter {text!r}: name the file inside the folder or repository, "
                         f"PATH_OR_ID:SUBFOLDER/WEIGHT_NAME (e.g. h94/IP-Adapter:sdxl_models/ip-adapter_sdxl.safetensors).")
    subfolder, weight_name = os.path.split(tail)
    return {"source": local_path(base), "subfolder": subfolder or None, "weight_name": weight_name}


def records_from_args(args) -> Dict[str, object]:
    """{"controlnets": [...], "t2i_adapter": ... | None, "ip_adapter": ... | None, "control_conversion": ...,
    "depth_model": ...}, checked within each group: every adapter has its image, scales match."""
    nets, images, scales = args.controlnet or [], args.control_image or [], args.control_scale or []
    if images and not nets:
        raise ValueError("--control-image needs --controlnet PATH_OR_ID: the ControlNet it conditions.")
    if len(images) != len(nets):
        raise ValueError(f"{len(nets)} --controlnet but {len(images)} --control-image; give one image per ControlNet, "
                         f"in the same order.")
    if scales and len(scales) != len(nets):
        raise ValueError(f"{len(nets)} --controlnet but {len(scales)} --control-scale; give none (1.0 each) or one per "
                         f"ControlNet, in the same order.")
    controlnets = [{"source": local_path(n), "image": local_path(i), "scale": s}
                   for n, i, s in zip(nets, images, scales or [None] * len(nets))]
    t2i = None
    if args.t2i_adapter or args.adapter_image or args.adapter_scale is not None:
        if not (args.t2i_adapter and args.adapter_image):
            raise ValueError("--t2i-adapter PATH_OR_ID and --adapter-image IMG go together (--adapter-scale S optional).")
        t2i = {"source": local_path(args.t2i_adapter), "image": local_path(args.adapter_image),
               "scale": args.adapter_scale}
    ip = None
    if args.ip_adapter or args.ip_image or args.ip_scale is not None:
        if not (args.ip_adapter and args.ip_image):
            raise ValueError("--ip-adapter PATH_OR_ID[:SUBFOLDER/WEIGHT_NAME] and --ip-image IMG go together "
                             "(--ip-scale S optional).")
        ip = {**_ip_source(args.ip_adapter), "image": local_path(args.ip_image), "scale": args.ip_scale}
    conversion = "canny" if args.canny else "depth" if args.depth else None
    return {"controlnets": controlnets, "t2i_adapter": t2i, "ip_adapter": ip, "control_conversion": conversion,
            "depth_model": args.depth_model if conversion == "depth" else None}


def check_combination(s) -> None:
    """The adapters, tasks and videos that fewstep's pipeline classes combine (pipelines/table.py): a ControlNet
    with text-to-image, --image, --mask or --frames; a T2I-Adapter with text-to-image only; --video with
    neither. Checked on the merged settings (flags over a --settings file), before anything loads."""
    video = getattr(s, "video", None)  # generate's flag; parity has none
    if s.control_conversion and not (s.controlnets or s.t2i_adapter):
        raise ValueError(f"--{s.control_conversion} converts the --control-image / --adapter-image; give a "
                         f"--controlnet or --t2i-adapter with its image.")
    if s.controlnets and s.t2i_adapter:
        raise ValueError("--controlnet and --t2i-adapter cannot be combined: fewstep has no pipeline with both; "
                         "use one.")
    inputs = [flag for flag, on in (("--image", s.image), ("--mask", s.mask), ("--frames", s.frames is not None),
                                    ("--video", video)) if on]
    if s.t2i_adapter and inputs:
        raise ValueError(f"--t2i-adapter makes pictures from text only (fewstep has no T2I-Adapter pipeline with "
                         f"{inputs[0]}); drop {inputs[0]}, or use --controlnet, which works with --image, --mask "
                         f"and --frames.")
    if video and s.frames is not None:
        raise ValueError("--video makes as many frames as the video has; drop --frames.")
    if video and s.controlnets:
        raise ValueError("--video cannot be combined with --controlnet: fewstep has no video-to-video ControlNet "
                         "pipeline; use --controlnet with --frames N (text-to-video), or --video alone.")


def load_components(s, backend: str, dtype: str, device: Optional[str]) -> dict:
    """The extension components for the pipeline's from_pretrained (they also select its class)."""
    from fewstep.pipelines.models import ControlNetModel, MotionAdapter, T2IAdapter

    where = dict(backend=backend, dtype=dtype, device=device)
    components = {}
    if s.controlnets:
        nets = [ControlNetModel.from_pretrained(c["source"], **where) for c in s.controlnets]
        components["controlnet"] = nets[0] if len(nets) == 1 else nets
    if s.t2i_adapter:
        components["adapter"] = T2IAdapter.from_pretrained(s.t2i_adapter["source"], **where)
    if s.frames is not None or getattr(s, "video", None):
        source = s.motion_adapter
        if source is None:
            from fewstep.testing.tiny_motion import tiny_motion_adapter

            source = tiny_motion_adapter()
            logs.say(f"No --motion-adapter given: using a tiny random-weight motion adapter at {source}.")
        components["motion_adapter"] = MotionAdapter.from_pretrained(source, **where)
    return components


def load_ip_adapter(pipe, s) -> None:
    if s.ip_adapter:
        ip = s.ip_adapter
        pipe.load_ip_adapter(ip["source"], subfolder=ip["subfolder"], weight_name=ip["weight_name"])
        if ip["scale"] is not None:
            pipe.set_ip_adapter_scale(ip["scale"])


def control_images(s) -> List:
    """The conditioning pictures, converted as --canny / --depth ask (ControlNets first, then the adapter)."""
    from fewstep.cli import control_images as conversion

    paths = [c["image"] for c in s.controlnets] + ([s.t2i_adapter["image"]] if s.t2i_adapter else [])
    return conversion.prepare(paths, s.control_conversion, s.depth_model) if paths else []


def call_kwargs(s, images: Sequence, pipe) -> dict:
    """The call arguments the adapters own, as the Python API spells them for `pipe`'s class: the control
    pictures under its control argument (`image` for text-to-image, `control_image` beside img2img's and
    inpainting's `image`, `conditioning_frames` for AnimateDiff, where one picture conditions each of the
    --frames); one ControlNet takes an image and a number, several take lists."""
    from fewstep.pipelines.controlnet import control_argument
    from fewstep.utils import load_image

    kwargs = {}
    if s.controlnets:
        scales = [c["scale"] for c in s.controlnets]
        pictures = list(images[:len(s.controlnets)])
        argument = control_argument(pipe)
        if argument == "conditioning_frames":  # a list with one control picture per frame, per ControlNet
            pictures = [[picture] * s.frames for picture in pictures]
        kwargs[argument] = pictures[0] if len(pictures) == 1 else pictures
        if any(scale is not None for scale in scales):
            scales = [1.0 if scale is None else scale for scale in scales]
            kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    if s.t2i_adapter:
        kwargs["image"] = images[-1]
        if s.t2i_adapter["scale"] is not None:
            kwargs["adapter_conditioning_scale"] = s.t2i_adapter["scale"]
    if s.ip_adapter:
        kwargs["ip_adapter_image"] = load_image(s.ip_adapter["image"])
    return kwargs
