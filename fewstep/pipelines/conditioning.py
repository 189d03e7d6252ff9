"""Model families as parts of the loop: what SD and SDXL put into the UNet besides the latents.

`prepare` encodes the prompt (negatives first under classifier-free guidance) into `call.cond`;
SDXL adds its pooled embeddings and micro-conditioning time ids (`time_ids.py`: sizes, crop, aesthetic score)
to every UNet call (`added_cond`) and decodes with the VAE upcast, as diffusers does.
"""

from __future__ import annotations

import numpy as np

from fewstep.pipelines import prompts, time_ids
from fewstep.pipelines.parts import Conditioning, Part


def _prompt_batch(prompt, prompt_embeds, what="prompt"):
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Pass either prompt or prompt_embeds, not both.")
    if prompt is None and prompt_embeds is None:
        raise ValueError("Pass a prompt (a string or a list of strings), or prompt_embeds.")
    if prompt is not None:
        return prompts.as_prompt_list(prompt, what)
    return None


class StableDiffusion(Part):
    """Stable Diffusion 1.x / 2.x: the last hidden state of one CLIP text encoder."""

    name = "sd"
    components = ("unet", "vae", "text_encoder", "tokenizer")
    default_guidance = 7.5

    def check_arguments(self, pipe, args, call):
        # before any work (the LoRA scale's re-fuse included): a clip_skip the encoder's layers allow
        prompts.check_clip_skip(args["clip_skip"], [pipe.text_encoder], 0)

    def prepare(self, pipe, call, args):
        ops = call.ops
        dtype = pipe.text_encoder.dtype
        texts = _prompt_batch(args["prompt"], args["prompt_embeds"])
        if texts is not None:
            embeds = prompts.encode_sd(ops, pipe.tokenizer, pipe.text_encoder, texts, dtype, clip_skip=args["clip_skip"])
        else:
            embeds = pipe._as_tensor(args["prompt_embeds"], "prompt_embeds", dtype)
        batch, num_images = ops.shape(embeds)[0], call.num_images_per_prompt
        embeds = prompts.repeat_rows(ops, embeds, num_images)
        if call.do_cfg:
            if args["negative_prompt_embeds"] is not None:
                negative = pipe._as_tensor(args["negative_prompt_embeds"], "negative_prompt_embeds", dtype)
            else:
                negative = prompts.encode_sd(ops, pipe.tokenizer, pipe.text_encoder,
                                             prompts.negative_prompts(args["negative_prompt"], batch), dtype,
                                             length=ops.shape(embeds)[1])
            embeds = ops.concat([prompts.repeat_rows(ops, negative, num_images), embeds], axis=0)
        call.cond = Conditioning(hidden=embeds, added=None, batch=batch * num_images, dtype=dtype)


class StableDiffusionXL(Part):
    """SDXL: two CLIP encoders (the refiner has only the second), the pooled projection and the micro-conditioning
    time ids, built by the `time_ids.Rule` of the class (its aesthetic-score and negative-size arguments)."""

    name = "sdxl"
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    # diffusers' _optional_components: the SDXL refiner ships without the first (CLIP ViT-L) encoder
    optional_components = ("text_encoder", "tokenizer")
    default_guidance = 5.0

    def __init__(self, rule: time_ids.Rule = time_ids.SIZES):
        self.rule = rule
        self.arguments = rule.arguments
        self.argument_docs = rule.argument_docs
        self.attributes = {"force_zeros_for_empty_prompt": True, **rule.attributes}

    def check_components(self, pipe):
        if (pipe.text_encoder is None) != (pipe.tokenizer is None):
            have, lack = ("text_encoder", "tokenizer") if pipe.tokenizer is None else ("tokenizer", "text_encoder")
            raise ValueError(f"{type(pipe).__name__} got a {have} but no {lack}: pass both (SDXL base) or neither "
                             f"(the SDXL refiner, which encodes with text_encoder_2 only).")

    def check_arguments(self, pipe, args, call):
        # before any work: the time-id layout against the UNet, and scores given to a UNet that takes none
        time_ids.check(self.rule, pipe, args, pipe.unet.config, self._projection_dim(pipe, args))
        prompts.check_clip_skip(args["clip_skip"], [pipe.text_encoder, pipe.text_encoder_2], 1)

    @staticmethod
    def _projection_dim(pipe, args) -> int:
        dim = pipe.text_encoder_2.config.get("projection_dim")
        if dim is None and args.get("pooled_prompt_embeds") is not None:
            dim = args["pooled_prompt_embeds"].shape[-1]
        return int(dim or 0)

    def prepare(self, pipe, call, args):
        ops = call.ops
        dtype = pipe.text_encoder_2.dtype
        # as diffusers' encode_prompt: the encoders the pipeline has (the refiner's hidden states are then
        # text_encoder_2's penultimate alone)
        encoders = tuple(e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None)
        tokenizers = tuple(t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None)
        pooled, negative_pooled = args["pooled_prompt_embeds"], args["negative_pooled_prompt_embeds"]
        texts = _prompt_batch(args["prompt"], args["prompt_embeds"])
        if texts is not None:
            embeds, pooled = prompts.encode_sdxl(ops, tokenizers, encoders, texts, dtype, clip_skip=args["clip_skip"])
        else:
            if pooled is None:
                raise ValueError("With prompt_embeds, SDXL also needs pooled_prompt_embeds.")
            embeds = pipe._as_tensor(args["prompt_embeds"], "prompt_embeds", dtype)
            pooled = pipe._as_tensor(pooled, "pooled_prompt_embeds", dtype)
        batch, num_images = ops.shape(embeds)[0], call.num_images_per_prompt
        if call.do_cfg:
            if args["negative_prompt_embeds"] is not None:
                if negative_pooled is None:
                    raise ValueError("With negative_prompt_embeds, SDXL also needs negative_pooled_prompt_embeds.")
                negative = (pipe._as_tensor(args["negative_prompt_embeds"], "negative_prompt_embeds", dtype),
                            pipe._as_tensor(negative_pooled, "negative_pooled_prompt_embeds", dtype))
            elif args["negative_prompt"] is None and pipe.force_zeros_for_empty_prompt:
                # diffusers' SDXL default: no negative prompt means zero negative embeddings
                negative = (prompts.zeros_like(ops, embeds), prompts.zeros_like(ops, pooled))
            else:
                negative = prompts.encode_sdxl(ops, tokenizers, encoders,
                                               prompts.negative_prompts(args["negative_prompt"], batch), dtype,
                                               length=ops.shape(embeds)[1])
        embeds = prompts.repeat_rows(ops, embeds, num_images)
        pooled = prompts.repeat_rows(ops, pooled, num_images)
        if call.do_cfg:
            embeds = ops.concat([prompts.repeat_rows(ops, negative[0], num_images), embeds], axis=0)
            pooled = ops.concat([prompts.repeat_rows(ops, negative[1], num_images), pooled], axis=0)
        batch *= num_images
        positive, negative = time_ids.build(self.rule, pipe, args, (call.height, call.width))
        ids = positive.repeat(batch, axis=0)
        if call.do_cfg:
            ids = np.concatenate([negative.repeat(batch, axis=0), ids], axis=0)
        added_ids = ops.from_numpy(ids, like=embeds, dtype=dtype)
        call.cond = Conditioning(hidden=embeds, added={"text_embeds": pooled, "time_ids": added_ids}, batch=batch,
                                 dtype=dtype)
        call.decode_kwargs = {"upcast": True}

    def unet_inputs(self, pipe, call, state, step):
        return {"added_cond": call.cond.added}
