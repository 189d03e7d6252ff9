"""Model families as parts of the loop: what SD and SDXL put into the UNet besides the latents.

`prepare` encodes the prompt (negatives first under classifier-free guidance) into `call.cond`;
SDXL adds its pooled embeddings and size/crop time ids to every UNet call (`added_cond`) and decodes
with the VAE upcast, as diffusers does.
"""

from __future__ import annotations

from fewstep.pipelines import prompts
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

    def prepare(self, pipe, call, args):
        ops = call.ops
        dtype = pipe.text_encoder.dtype
        texts = _prompt_batch(args["prompt"], args["prompt_embeds"])
        if texts is not None:
            embeds = prompts.encode_sd(ops, pipe.tokenizer, pipe.text_encoder, texts, dtype)
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
    """SDXL: two CLIP encoders, the pooled projection and the size/crop time ids."""

    name = "sdxl"
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    attributes = {"force_zeros_for_empty_prompt": True}
    default_guidance = 5.0

    def prepare(self, pipe, call, args):
        ops = call.ops
        dtype = pipe.text_encoder_2.dtype
        encoders = (pipe.text_encoder, pipe.text_encoder_2)
        tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
        pooled, negative_pooled = args["pooled_prompt_embeds"], args["negative_pooled_prompt_embeds"]
        texts = _prompt_batch(args["prompt"], args["prompt_embeds"])
        if texts is not None:
            embeds, pooled = prompts.encode_sdxl(ops, tokenizers, encoders, texts, dtype)
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
        projection_dim = pipe.text_encoder_2.config.get("projection_dim") or ops.shape(pooled)[-1]
        size = (call.height, call.width)
        ids = prompts.sdxl_time_ids(args["original_size"] or size, args["crops_coords_top_left"],
                                    args["target_size"] or size, pipe.unet.config, int(projection_dim))
        rows = batch * (2 if call.do_cfg else 1)
        time_ids = ops.from_numpy(ids.repeat(rows, axis=0), like=embeds, dtype=dtype)
        call.cond = Conditioning(hidden=embeds, added={"text_embeds": pooled, "time_ids": time_ids}, batch=batch,
                                 dtype=dtype)
        call.decode_kwargs = {"upcast": True}

    def unet_inputs(self, pipe, call, state, step):
        return {"added_cond": call.cond.added}
