"""Prompts to UNet conditioning, for SD (one CLIP encoder) and SDXL (two, plus pooled and time ids).

Tokenizers are transformers' (framework-free, NumPy ids); encoders are the backend's adapters. The
arithmetic follows diffusers' `encode_prompt`, so the same prompt gives the same embeddings.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import numpy as np

from fewstep.core import checks

logger = logging.getLogger(__name__)


def as_prompt_list(prompt, what: str = "prompt") -> List[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt) and prompt:
        return list(prompt)
    raise ValueError(f"{what} must be a string or a non-empty list of strings; got {type(prompt).__name__}.")


def token_ids(tokenizer, prompts: Sequence[str], max_length: Optional[int] = None) -> np.ndarray:
    length = max_length or tokenizer.model_max_length
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                    return_tensors="np").input_ids.astype(np.int64)
    _warn_truncated(tokenizer, prompts, length)
    return ids


def _warn_truncated(tokenizer, prompts: Sequence[str], length: int) -> None:
    """diffusers' warning for a prompt longer than the text encoder reads, with the words that were dropped."""
    for prompt in prompts:
        full = tokenizer(prompt, truncation=False).input_ids
        if len(full) > length:
            removed = tokenizer.decode(full[length - 1:-1])
            logger.warning("The following part of your input was truncated because CLIP can only handle sequences up "
                           f"to {length} tokens: {removed[:200]}{'...' if len(removed) > 200 else ''}")


def encoder_ids(tokenizer, encoder, texts: Sequence[str], max_length: Optional[int] = None) -> np.ndarray:
    """`token_ids`, checked against the text encoder's vocabulary: a tokenizer that hands out ids the encoder
    has no embedding for (a tokenizer from another model, or a word the demo model never learnt, whose BPE
    pieces have ids of their own) fails here with what to do, not deep inside the embedding lookup."""
    ids = token_ids(tokenizer, texts, max_length)
    size = (getattr(encoder, "config", None) or {}).get("vocab_size")
    if size is not None and ids.size and int(ids.max()) >= size:
        unknown = sorted({t for text in texts for t in tokenizer.tokenize(text)
                          if tokenizer.convert_tokens_to_ids(t) >= size})
        raise ValueError(f"The prompt has tokens the text encoder has no embedding for ({', '.join(unknown[:8])}): "
                         f"its vocabulary has {size} entries. Use words the model knows, or the model's own tokenizer.")
    return ids


def repeat_rows(ops, x, times: int):
    """Each batch row repeated `times` times in place (p0, p0, p1, p1), as diffusers' repeat + view."""
    if times == 1:
        return x
    rows = ops.split(x, ops.shape(x)[0], axis=0)
    return ops.concat([r for r in rows for _ in range(times)], axis=0)


def negative_prompts(negative_prompt, batch: int) -> List[str]:
    if negative_prompt is None:
        return [""] * batch
    negatives = as_prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1 and batch > 1:
        negatives = negatives * batch
    if len(negatives) != batch:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch}; pass one per prompt.")
    return negatives


def check_clip_skip(clip_skip, text_encoders, offset: int) -> Optional[int]:
    """`clip_skip` as an int (None stays None), or a one-line ValueError: a whole number >= 0 that every
    encoder can skip. diffusers indexes hidden_states[-(clip_skip + 1 + offset)] (SD: offset 0, SDXL: 1, as it
    always starts from the penultimate layer), of the encoder's layers plus the embeddings."""
    if clip_skip is None:
        return None
    layers = min(encoder.num_layers for encoder in text_encoders if encoder is not None)
    return checks.whole(clip_skip, "clip_skip", 0, layers - offset,
                        f"It is the number of the text encoder's last layers to skip (1: use the penultimate "
                        f"layer's output); this one has {layers} layers.")


def encode_sd(ops, tokenizer, text_encoder, texts, dtype: str, length: Optional[int] = None,
              clip_skip: Optional[int] = None):
    """SD's conditioning for a list of texts: the last hidden state of the CLIP encoder, or with `clip_skip`
    the hidden state that many layers before it through the encoder's final layer norm (diffusers'
    `encode_prompt`; it never clip-skips negatives). Negatives are padded to the prompts' `length`, as
    diffusers pads them."""
    clip_skip = check_clip_skip(clip_skip, [text_encoder], 0)
    ids = encoder_ids(tokenizer, text_encoder, texts, length)
    if clip_skip is None:
        return ops.cast(text_encoder(ids)[0], dtype)
    return ops.cast(text_encoder.final_layer_norm(text_encoder(ids, skip=clip_skip)[1]), dtype)


def encode_sdxl(ops, tokenizers, text_encoders, texts, dtype: str, length: Optional[int] = None,
                clip_skip: Optional[int] = None):
    """SDXL's (embeds, pooled) for a list of texts: both encoders' penultimate hidden states (with `clip_skip`,
    the hidden states `clip_skip + 1` layers before the last, without a layer norm, as diffusers) concatenated
    on the feature axis, and the pooled projection of the second encoder."""
    skip = 1 + (check_clip_skip(clip_skip, text_encoders, 1) or 0)
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        _, chosen, projected = encoder(encoder_ids(tokenizer, encoder, texts, length), skip=skip)
        hidden.append(chosen)
        pooled = projected if projected is not None else pooled
    return ops.cast(ops.concat(hidden, axis=-1), dtype), ops.cast(pooled, dtype)


def zeros_like(ops, x):
    return ops.from_numpy(np.zeros(ops.shape(x), np.float32), like=x)
