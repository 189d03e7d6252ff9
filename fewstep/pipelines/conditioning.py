"""What SD and SDXL put into the UNet besides the latents. A mixin each for `DiffusionPipeline`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fewstep.pipelines import prompts


@dataclass
class Conditioning:
    hidden: Any            # encoder_hidden_states for the whole UNet batch (negatives first under CFG)
    added: Optional[dict]  # SDXL's text_embeds and time_ids, else None
    batch: int             # images made (prompts x num_images_per_prompt)
    dtype: str             # dtype of the latents and everything fed to the UNet


def _prompt_batch(prompt, prompt_embeds, what="prompt"):
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Pass either prompt or prompt_embeds, not both.")
    if prompt is None and prompt_embeds is None:
        raise ValueError("Pass a prompt (a string or a list of strings), or prompt_embeds.")
    if prompt is not None:
        return prompts.as_prompt_list(prompt, what)
    return None


class SDConditioning:
    """Stable Diffusion 1.x / 2.x: the last hidden state of one CLIP text encoder."""

    _components = ("unet", "vae", "text_encoder", "tokenizer")
    _decode_kwargs: dict = {}

    def _encode(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, pooled, negative_pooled,
                num_images, do_cfg, height, width, original_size, target_size, crops):
        ops = self.ops
        dtype = self.text_encoder.dtype
        texts = _prompt_batch(prompt, prompt_embeds)
        if texts is not None:
            embeds = prompts.encode_sd(ops, self.tokenizer, self.text_encoder, texts, dtype)
        else:
            embeds = self._as_tensor(prompt_embeds, "prompt_embeds", dtype)
        batch = ops.shape(embeds)[0]
        embeds = prompts.repeat_rows(ops, embeds, num_images)
        if do_cfg:
            if negative_prompt_embeds is not None:
                negative = self._as_tensor(negative_prompt_embeds, "negative_prompt_embeds", dtype)
            else:
                negative = prompts.encode_sd(ops, self.tokenizer, self.text_encoder,
                                             prompts.negative_prompts(negative_prompt, batch), dtype,
                                             length=ops.shape(embeds)[1])
            embeds = ops.concat([prompts.repeat_rows(ops, negative, num_images), embeds], axis=0)
        return Conditioning(hidden=embeds, added=None, batch=batch * num_images, dtype=dtype)


class SDXLConditioning:
    """SDXL: two CLIP encoders, the pooled projection and the size/crop time ids."""

    _components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    _decode_kwargs = {"upcast": True}
    force_zeros_for_empty_prompt = True
    _default_guidance = 5.0

    def _encode(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, pooled, negative_pooled,
                num_images, do_cfg, height, width, original_size, target_size, crops):
        ops = self.ops
        dtype = self.text_encoder_2.dtype
        encoders = (self.text_encoder, self.text_encoder_2)
        tokenizers = (self.tokenizer, self.tokenizer_2)
        texts = _prompt_batch(prompt, prompt_embeds)
        if texts is not None:
            embeds, pooled = prompts.encode_sdxl(ops, tokenizers, encoders, texts, dtype)
        else:
            if pooled is None:
                raise ValueError("With prompt_embeds, SDXL also needs pooled_prompt_embeds.")
            embeds = self._as_tensor(prompt_embeds, "prompt_embeds", dtype)
            pooled = self._as_tensor(pooled, "pooled_prompt_embeds", dtype)
        batch = ops.shape(embeds)[0]
        if do_cfg:
            if negative_prompt_embeds is not None:
                if negative_pooled is None:
                    raise ValueError("With negative_prompt_embeds, SDXL also needs negative_pooled_prompt_embeds.")
                negative = (self._as_tensor(negative_prompt_embeds, "negative_prompt_embeds", dtype),
                            self._as_tensor(negative_pooled, "negative_pooled_prompt_embeds", dtype))
            elif negative_prompt is None and self.force_zeros_for_empty_prompt:
                # diffusers' SDXL default: no negative prompt means zero negative embeddings
                negative = (prompts.zeros_like(ops, embeds), prompts.zeros_like(ops, pooled))
            else:
                negative = prompts.encode_sdxl(ops, tokenizers, encoders, prompts.negative_prompts(negative_prompt, batch),
                                               dtype, length=ops.shape(embeds)[1])
        embeds = prompts.repeat_rows(ops, embeds, num_images)
        pooled = prompts.repeat_rows(ops, pooled, num_images)
        if do_cfg:
            embeds = ops.concat([prompts.repeat_rows(ops, negative[0], num_images), embeds], axis=0)
            pooled = ops.concat([prompts.repeat_rows(ops, negative[1], num_images), pooled], axis=0)
        batch *= num_images
        projection_dim = self.text_encoder_2.config.get("projection_dim") or ops.shape(pooled)[-1]
        ids = prompts.sdxl_time_ids(original_size or (height, width), crops, target_size or (height, width),
                                    self.unet.config, int(projection_dim))
        rows = batch * (2 if do_cfg else 1)
        time_ids = ops.from_numpy(ids.repeat(rows, axis=0), like=embeds, dtype=dtype)
        return Conditioning(hidden=embeds, added={"text_embeds": pooled, "time_ids": time_ids}, batch=batch, dtype=dtype)
