"""`fewstep generate`: images (or an AnimateDiff video, from the prompt or from a --video) from a prompt, with
LoRAs and adapters, one or several seeds, and a settings record that makes them again."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Iterable

from fewstep.cli import adapters, logs, loras, outputs, settings
from fewstep.cli.common import (add_common, call_kwargs, is_single_file, model_source, open_image, open_video,
                                task_of)


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="make an image")
    add_common(gen, prompt_optional=True)
    gen.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
    gen.add_argument("--recipe", metavar="NAME[:VARIANT]", default=None,
                     help="sample as a few-step method's model card says (scheduler, steps, timesteps, guidance, eta; "
                          "`fewstep recipes` lists them): lightning, hyper-sd, hyper-sd-unified, dmd2, pcm, turbo, "
                          "flash, nitrofusion, lcm, tcd. --steps picks among the counts it supports; --guidance / "
                          "--eta given still win. Default: the recipe of a known --model / --lora file or hub id")
    gen.add_argument("--config", metavar="FOLDER",
                     help="with --model FILE.safetensors (a single-file checkpoint): a diffusers folder or hub id of the "
                          "same family describing its models (default: the family's reference repository's configs)")
    gen.add_argument("-o", "--output", default="out.png",
                     help="image file; with --frames or --video a .gif or .mp4; with --num-images N, "
                          "<name>-<seed>.<ext> each")
    gen.add_argument("--num-images", type=int, default=1, metavar="N",
                     help="N images, seeds --seed, --seed+1, ... (each the image that seed alone gives)")
    gen.add_argument("--grid", metavar="FILE", help="also write the images (after the control images) as one grid")
    loras.add_lora_flags(gen)
    adapters.add_adapter_flags(gen)
    gen.add_argument("--frames", type=int, default=None,
                     help="make an AnimateDiff video of this many frames (SD 1.5); with --controlnet, its "
                          "--control-image conditions every frame (AnimateDiffControlNetPipeline)")
    gen.add_argument("--video", metavar="GIF",
                     help="video-to-video (AnimateDiffVideoToVideoPipeline): an animated .gif whose frames are noised "
                          "to --strength (default 0.8) and redrawn; the output has as many frames")
    gen.add_argument("--motion-adapter", help="AnimateDiff motion adapter folder or hub id, for --frames or --video "
                                              "(default with the tiny demo model: a tiny random one)")
    gen.add_argument("--fps", type=int, default=8, help="frames per second of the video file (default 8)")
    gen.add_argument("--tiny-vae", metavar="PATH_OR_ID",
                     help="decode (and encode) with this AutoencoderTiny instead of the model's VAE: a TAESD folder "
                          "or hub id (madebyollin/taesd for SD 1.5 / 2.x, madebyollin/taesdxl for SDXL), for fast "
                          "previews")
    gen.add_argument("--compile", action="store_true",
                     help="compile the models each step runs (torch.compile of the UNet, ControlNets, T2I-Adapter and "
                          "VAE decoder on torch; mindspore.jit of the UNet on MindSpore): the first image waits for "
                          "the compiler, every later seed runs faster; images equal uncompiled ones within 1e-4")
    gen.add_argument("--settings", metavar="FILE",
                     help="replay a run's settings (from --save-settings); flags given beside it override the file")
    gen.add_argument("--save-settings", metavar="FILE", help="write this run's settings as JSON, to replay with --settings")


def check(s, args) -> None:
    """Everything that can be checked before a model loads (on the merged settings)."""
    task_of(s.image, s.mask, s.video)
    adapters.check_combination(s)
    if s.config and not is_single_file(s.model):
        raise ValueError("--config describes a single-file checkpoint: give it with --model FILE.safetensors.")
    video = video_flag(s)
    if video is None:
        if s.motion_adapter:
            raise ValueError("--motion-adapter needs --frames N (the number of video frames to make) or --video GIF.")
        if outputs.is_video(args.output):
            raise ValueError(f"{args.output!r} is a video name: add --frames N (or --video GIF), or name the output "
                             f".png.")
    else:
        if not outputs.is_video(args.output):
            raise ValueError(f"{video} makes a video: name the output .gif or .mp4 (got {args.output!r}).")
        if s.frames is not None and (s.image or s.mask):
            raise ValueError("--frames makes a video from text; --image / --mask are not supported with it.")
        if s.model and not s.motion_adapter:
            raise ValueError(f"{video} with --model needs --motion-adapter PATH_OR_ID (e.g. "
                             f"guoyww/animatediff-motion-adapter-v1-5).")
        if args.grid:
            raise ValueError(f"--grid puts images side by side; it does not take {video} videos.")
    check_tiny_vae(s.tiny_vae)
    outputs.check_output(args.output)
    if args.grid:
        outputs.check_output(args.grid)
    for flag, path in input_pictures(s):  # last: the flags' own mistakes are named first
        open_image(path, flag)  # a missing, truncated or huge picture fails now, in one line
    if s.video:
        open_video(s.video, "--video")  # likewise a missing, unreadable or one-frame video


_TINY_VAE_HINT = ("pass an AutoencoderTiny folder (config.json and safetensors weights) or a hub id: madebyollin/taesd "
                   "for SD 1.5 / 2.x, madebyollin/taesdxl for SDXL")


def check_tiny_vae(source) -> None:
    """--tiny-vae names a local folder that holds an AutoencoderTiny, or else something that can only be a hub id
    (fetched when the models load); checked before any model loads, in one line that says what to pass."""
    if source is None:
        return
    if os.path.isdir(source):
        from fewstep.pipelines.loading import read_json_object

        config = os.path.join(source, "config.json")
        if not os.path.isfile(config):
            raise ValueError(f"--tiny-vae {source}: the folder has no config.json; {_TINY_VAE_HINT}.")
        found = read_json_object(config, "the --tiny-vae model's config", _TINY_VAE_HINT).get("_class_name")
        if found != "AutoencoderTiny":
            raise ValueError(f"--tiny-vae {source}: its config.json names {found or 'no model class'}, not "
                             f"AutoencoderTiny; {_TINY_VAE_HINT}.")
    elif os.path.exists(source) or not _is_repo_id(source):
        what = "is a file" if os.path.exists(source) else "is not a folder"
        raise ValueError(f"--tiny-vae {source} {what}; {_TINY_VAE_HINT}.")


def _is_repo_id(text: str) -> bool:
    """Whether `text` can be a hub repository id (`name` or `owner/name`), by huggingface_hub's own rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def load_tiny_vae(source: str, backend: str, dtype: str, device):
    """The --tiny-vae model for the pipeline's vae=, loaded as the adapters' flags load theirs: the backend's library
    (diffusers' or mindone's AutoencoderTiny), a folder or a hub id, the run's dtype and device."""
    from fewstep.pipelines.models import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(source, backend=backend, dtype=dtype, device=device)


def video_flag(s):
    """The flag that makes this run a video ("--frames" or "--video"), or None for pictures."""
    return "--video" if s.video else "--frames" if s.frames is not None else None


def input_pictures(s):
    """(flag, path) of every picture the settings read: --image, --mask, control, adapter and IP-Adapter images."""
    pictures = [("--image", s.image), ("--mask", s.mask)]
    pictures += [("--control-image", c.get("image")) for c in s.controlnets or ()]
    pictures += [("--adapter-image", (s.t2i_adapter or {}).get("image")), ("--ip-image", (s.ip_adapter or {}).get("image"))]
    return [(flag, path) for flag, path in pictures if path]


def build_pipeline(s, folder: str, first_loras=()):
    """The pipeline the settings describe: its class from the factory's table (the folder's family, the task
    from --image / --mask / --video, the adapters from the components passed: a ControlNet with --image is
    StableDiffusionControlNetImg2ImgPipeline; --tiny-vae's AutoencoderTiny as vae=), the scheduler, the LoRAs
    (`first_loras`, then --lora's), the IP-Adapter."""
    import fewstep

    task = task_of(s.image, s.mask, getattr(s, "video", None))  # parity's settings have no video
    components = adapters.load_components(s, s.backend, s.dtype, s.device)
    if getattr(s, "tiny_vae", None):  # parity's settings have no tiny VAE
        components["vae"] = load_tiny_vae(s.tiny_vae, s.backend, s.dtype, s.device)
    if folder is None:
        pipe = _from_single_file(s, components)
    elif task == "video2video":  # no AutoPipeline has this task: the factory picks the class as they do
        pipe = _video_to_video(folder, components).from_pretrained(folder, backend=s.backend, dtype=s.dtype,
                                                                   device=s.device, **components)
    else:
        auto = {"text2img": fewstep.AutoPipelineForText2Image, "img2img": fewstep.AutoPipelineForImage2Image,
                "inpaint": fewstep.AutoPipelineForInpainting}[task]
        pipe = auto.from_pretrained(folder, backend=s.backend, dtype=s.dtype, device=s.device, **components)
    if getattr(s, "recipe", None):  # parity's settings have no recipe
        from fewstep import recipes

        recipes.apply(pipe, s.recipe, s.steps)
    else:
        scheduler_cls = fewstep.TCDScheduler if s.scheduler == "tcd" else fewstep.LCMScheduler
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    loras.apply_loras(pipe, [*first_loras, *loras.specs_from_records(s.loras)])
    adapters.load_ip_adapter(pipe, s)
    return pipe


def _video_to_video(folder: str, components: dict) -> type:
    """AnimateDiffVideoToVideoPipeline for an SD folder (the factory's class for its family, the video2video task
    and the motion adapter), or the factory's one-line refusal naming what fewstep runs."""
    from fewstep.pipelines import factory
    from fewstep.pipelines.loading import read_model_index

    return factory.pipeline_class(read_model_index(folder).get("_class_name"), "video2video", components,
                                  where=repr(folder))


def _from_single_file(s, components):
    """A single-file checkpoint: its family read from its keys (and named), the class as factory.pipeline_class
    picks it for that family with this task and these components, loaded by `from_single_file`."""
    from fewstep.pipelines.factory import single_file_class

    # refuses pickles unread, names an unknown layout or a pipeline that cannot load a checkpoint
    family, cls = single_file_class(s.model, task_of(s.image, s.mask, getattr(s, "video", None)), components)
    print(f"{s.model}: single-file checkpoint, family {family.name}, loaded as {cls.__name__}"
          f"{f' with the configs of {s.config}' if s.config else ''}")
    return cls.from_single_file(s.model, backend=s.backend, dtype=s.dtype, device=s.device, config=s.config,
                                **components)


def run(args, given: Iterable[str]) -> int:
    import fewstep

    s = settings.resolve(args, given)
    check(s, args)
    if s.recipe_note:
        logs.say(s.recipe_note)
    seeds = settings.seeds(s)
    logs.say("settings " + json.dumps(settings.record_of(s), ensure_ascii=False))
    folder, first_loras = model_source(s)
    start = time.perf_counter()
    control = adapters.control_images(s)  # before the models: a missing picture or OpenCV fails at once
    pipe = build_pipeline(s, folder, first_loras)
    if getattr(args, "compile", False):  # how the images are computed, not what they are: not in the settings record
        pipe.compile()
    kwargs = dict(call_kwargs(s), **adapters.call_kwargs(s, control, pipe), output_type="pil")
    kwargs.update(settings.recipe_call_arguments(s))
    if s.frames is not None:
        kwargs["num_frames"] = s.frames  # --video: the video's frame count, which the pipeline reads from it
    video = video_flag(s) is not None
    results = []
    for seed in seeds:  # one call per seed: each image is bitwise the one `--seed seed` alone makes
        step_start = time.perf_counter()
        out = pipe(generator=fewstep.Generator(seed), **kwargs)
        results.append(out.frames[0] if video else out.images[0])
        logs.say(f"seed {seed}  backend {s.backend}  {s.steps} steps  {settings.sampler_words(s)}  "
                 f"{out.timings['per_step_s'] * 1000:.1f} ms/step  "
              f"total {time.perf_counter() - (start if len(results) == 1 else step_start):.2f} s")
    # written only now: a run that fails on its way leaves no file
    for path, result in zip(outputs.output_paths(args.output, seeds), results):
        if video:
            outputs.save_video(result, path, s.fps)
        else:
            outputs.save_image(result, path)
        logs.wrote(path)
    if args.grid:
        # cells the size of the results: a control picture of another size is resized to them
        outputs.save_image(outputs.grid(list(control) + results, size=results[0].size), args.grid)
        logs.wrote(args.grid)
    settings.save(s, args.save_settings)
    return 0


def parse_given(parser: argparse.ArgumentParser, argv) -> set:
    """The argparse dests given on the command line (not defaulted): what overrides a --settings file."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["generate"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}
