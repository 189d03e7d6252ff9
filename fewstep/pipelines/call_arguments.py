"""The documentation of the loop's call: its own arguments in diffusers' words (`CALL_ARGUMENTS`; a part
rewords some in its `rewords`), and each class's `__call__` docstring assembled from the arguments its parts
give it (see docstrings.py)."""

from __future__ import annotations

import inspect
from typing import Dict, List

from fewstep.pipelines.docstrings import Arg, args_section, section

CALL_SUMMARY = """Run the pipeline: encode the prompt, denoise over the scheduler's timesteps in one loop, decode.

Every argument this class takes is listed below; those an adapter or the video layout owns come
last and are passed by keyword."""

#: The loop's call arguments, in diffusers' words where diffusers has them. A task rewords `image`,
#: `mask_image`, `strength` or `latents` in its `_argument_docs` (tasks.py).
CALL_ARGUMENTS: Dict[str, Arg] = {
    "prompt": Arg("`str` or `List[str]`", "The prompt or prompts to guide generation. If not given, pass "
                  "`prompt_embeds`."),
    "image": Arg("`PIL.Image.Image`, `np.ndarray` or a list of them",
                 "The image to start from in img2img and inpainting pipelines (PIL images are resized to the "
                 "output size, HWC arrays in [0, 1] must have it), or the conditioning image of a ControlNet or "
                 "T2I-Adapter pipeline. Text-to-image pipelines take none."),
    "mask_image": Arg("`PIL.Image.Image`, `np.ndarray` or a list of them",
                      "Inpainting pipelines only: where to repaint (white) and what to keep (black)."),
    "height": Arg("`int`", "The height in pixels of the output, a multiple of the VAE's downsampling factor "
                  "(`vae_scale_factor`: 8 for SD and SDXL). By default the UNet's `sample_size` times that factor "
                  "for text-to-image, the input image's height rounded down to the factor for img2img and "
                  "inpainting, and the conditioning image's for ControlNet and T2I-Adapter pipelines."),
    "width": Arg("`int`", "The width in pixels of the output; see `height`."),
    "num_inference_steps": Arg("`int`", "The number of denoising steps; TCD and LCM need only a few (2 to 8). "
                               "Ignored when `timesteps` is given."),
    "timesteps": Arg("`List[int]`", "Custom timesteps in descending order, passed to the scheduler's "
                     "`set_timesteps(timesteps=...)` instead of `num_inference_steps`."),
    "guidance_scale": Arg("`float`", "Classifier-free guidance scale; above 1 the UNet also runs on the negative "
                          "prompt (twice the batch) and the two predictions are extrapolated. A UNet with "
                          "`time_cond_proj_dim` (LCM-distilled) takes `guidance_scale - 1` as its guidance embedding "
                          "instead and runs once. TCD and LCM LoRAs are usually run with guidance off (0 or 1) or "
                          "low. `None` uses the class's default."),
    "negative_prompt": Arg("`str` or `List[str]`", "What to guide away from; used only while guidance is on. "
                           "Without one, SD pipelines use the empty prompt and SDXL pipelines zero embeddings "
                           "(unless the folder's `force_zeros_for_empty_prompt` is false)."),
    "eta": Arg("`float`", "The stochasticity of each step, passed to schedulers whose `step` takes `eta`: TCD's "
               "gamma (0 is deterministic; the TCD authors suggest 0.3). LCM takes none and ignores it."),
    "strength": Arg("`float`", "Img2img and inpainting pipelines: how much of the schedule runs on the input "
                    "image (1.0 runs all of it and keeps little of the image). `None` uses the class's default."),
    "generator": Arg("`int`, `fewstep.Generator`, `torch.Generator`, `np.random.Generator` or a list of them",
                     "The source of all random numbers (initial noise, image encoding, the scheduler's noise). An "
                     "int is `fewstep.Generator(int)`, which draws what `torch.manual_seed(int)` would on the CPU, "
                     "on either backend; a list gives one generator per output (prompts x `num_images_per_prompt`). "
                     "None picks a fresh seed, reported in the output's `.seeds`."),
    "latents": Arg("backend tensor or `np.ndarray`", "Pre-generated initial noise of the latents' shape (batch, "
                   "channels, height / 8, width / 8; AnimateDiff adds the frames after the channels), used instead "
                   "of drawing it from `generator` and scaled by the scheduler's `init_noise_sigma`."),
    "prompt_embeds": Arg("backend tensor or `np.ndarray`", "Pre-computed text embeddings (the text encoder's "
                         "output), instead of `prompt`."),
    "negative_prompt_embeds": Arg("backend tensor or `np.ndarray`", "Pre-computed negative text embeddings, "
                                  "instead of `negative_prompt`."),
    "pooled_prompt_embeds": Arg("backend tensor or `np.ndarray`", "SDXL only: the pooled text embeddings that go "
                                "with `prompt_embeds` (required with them)."),
    "negative_pooled_prompt_embeds": Arg("backend tensor or `np.ndarray`", "SDXL only: the pooled negative "
                                         "embeddings that go with `negative_prompt_embeds` (required with them)."),
    "num_images_per_prompt": Arg("`int`", "The number of outputs to make per prompt."),
    "output_type": Arg("`str`", 'What the output holds: "pil" (PIL images), "np" (float arrays in [0, 1], '
                       'NHWC), "pt" (a tensor of the pipeline\'s framework in [0, 1], NCHW, on its device: a torch '
                       'tensor on torch, a MindSpore tensor on MindSpore) or "latent" (the final latents, not '
                       'decoded).'),
    "return_dict": Arg("`bool`", "Whether to return a `PipelineOutput` instead of a plain tuple."),
    "callback_on_step_end": Arg("`Callable`", "Called after every step as `callback_on_step_end(pipe, i, t, "
                                "tensors)`, `tensors` a dict of the names in `callback_on_step_end_tensor_inputs`; "
                                'a returned dict with "latents" replaces the latents.'),
    "callback_on_step_end_tensor_inputs": Arg("`Sequence[str]`", 'The tensors passed to `callback_on_step_end`: '
                                              '"latents" and / or "prompt_embeds".'),
    "original_size": Arg("`Tuple[int, int]`", "SDXL only: the (height, width) micro-conditioning of the "
                         "training image's original size; `None` means (height, width). SD pipelines ignore it."),
    "target_size": Arg("`Tuple[int, int]`", "SDXL only: the (height, width) micro-conditioning of the target "
                       "size; `None` means (height, width). SD pipelines ignore it."),
    "crops_coords_top_left": Arg("`Tuple[int, int]`", "SDXL only: the crop micro-conditioning; (0, 0) gives "
                                 "well-centred images. SD pipelines ignore it."),
    "clip_skip": Arg("`int`", "The number of the CLIP text encoder's last layers to skip when encoding the prompt: "
                     "1 uses the penultimate layer's output (SD: through the encoder's final layer norm; SDXL, which "
                     "starts from the penultimate layer, then uses the one before it), as diffusers. Negative "
                     "prompts are encoded without it, as diffusers encodes them. `None` skips none."),
    "cross_attention_kwargs": Arg("`dict`", 'Passed to the UNet\'s attention processors. Its "scale" is taken '
                                  "out and sets the scale of fused LoRAs for this call (they are re-fused at it)."),
}


def call_arguments(cls, call) -> List[tuple]:
    """(name, Arg, default) for every argument `call` (the loop's `__call__`) takes on pipeline class `cls`, in
    call order: the loop's (as the class's parts word them), then those its parts own. An owned argument its
    part does not document is left out (tests/test_docstrings.py catches it)."""
    docs = dict(CALL_ARGUMENTS)
    for part in cls._parts:
        docs.update(part.rewords)
    defaults = {name: p.default for name, p in inspect.signature(call).parameters.items()
                if name != "self" and p.kind is not p.VAR_KEYWORD}
    # None in the signature stands for the class's own default
    defaults.update(guidance_scale=cls._default_guidance, strength=cls._default_strength)
    for part in cls._parts:
        for name, default in part.arguments.items():
            defaults[name] = default
            docs.pop(name, None)
            if name in part.argument_docs:
                docs[name] = part.argument_docs[name]
    return [(name, docs[name], default) for name, default in defaults.items() if name in docs]


def call_docstring(cls, call) -> str:
    """The `__call__` docstring of pipeline class `cls`: its arguments and what it returns."""
    returns = (f"`PipelineOutput` or `tuple`:\nWith `return_dict=True`, a `PipelineOutput` whose "
               f"{cls._layout.output_doc}; `.seeds` holds the seeds of the `fewstep.Generator`s used (None "
               f"for torch or NumPy generators), so every output can be made again, and `.timings` the "
               f"seconds spent denoising (`denoise_s`, `per_step_s`). With `return_dict=False`, a tuple "
               f"whose only element is the {cls._layout.output_field}.")
    return "\n\n".join([CALL_SUMMARY, args_section(call_arguments(cls, call)), section("Returns", returns)])
