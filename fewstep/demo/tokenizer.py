"""A word-level CLIP tokenizer for the demo, built offline from the words of its captions.

transformers' `CLIPTokenizer` is byte-pair encoding: a word starts as characters (the last one marked with
"</w>") and is merged by the ranked rules in merges.txt; whatever is left is looked up in vocab.json. To make
every known word one token, the merges are learnt here the way BPE learns them (repeatedly merge the most
frequent adjacent pair over the word list) until each word is a single symbol: replaying learnt merges in
rank order always rebuilds the training words, which hand-written prefix merges do not (a merge from one
word can fire first inside another and strand it). vocab.json then holds only the special tokens and the
whole words, so any other word falls to `<|endoftext|>` (CLIP's unknown token) instead of to characters
the text encoder never saw in training.

The `tokenizers` library behind transformers 5's `CLIPTokenizer` (and every fast tokenizer) also requires each
side of a merge and its result to be in the vocabulary ("Token 'g' out of vocabulary" otherwise). vocab.json
therefore also lists those intermediate symbols, after the words (ids the text encoder has no embedding for:
`tokenizers` works on ids, so they cannot share the unknown token's). Every prompt in the demo's vocabulary
tokenizes to the same ids as before with either implementation; a word outside it is refused by the pipeline
(`fewstep.pipelines.prompts.encoder_ids`) instead of being read as `<|endoftext|>`.

transformers is imported inside `build_tokenizer` only: this module is importable without a framework.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from typing import Iterable

from fewstep.core.files import write_text

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# The demo's captions are at most 9 words (+ start and end tokens): 16 positions leave room for a longer
# prompt while keeping the text encoder's attention 5x cheaper than SD's 77.
MAX_LENGTH = 16

# Lowercase letter runs and single punctuation marks: what CLIP's pre-tokenizer splits the demo's captions
# into (its full pattern also knows digits and contractions, which the captions never contain).
_WORDS = re.compile(r"[a-z]+|[^\sa-z]")


def caption_words(texts: Iterable[str]) -> list:
    """The distinct words (and punctuation marks) of `texts`, lowercased, sorted."""
    return sorted({w for text in texts for w in _WORDS.findall(text.lower())})


def learn_merges(words: Iterable[str]) -> list:
    """BPE merges (pairs, best rank first) that turn each of `words` into one symbol `word + "</w>"`.

    Ties between equally frequent pairs break on the pair itself, so the merges depend only on the word set."""
    pieces = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in sorted(set(words))}
    merges = []
    while True:
        counts = Counter(p for seq in pieces.values() if len(seq) > 1 for p in zip(seq, seq[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = tuple(merged)


def write_vocabulary(folder: str, words: Iterable[str]) -> tuple:
    """Write vocab.json (specials, then the words in sorted order, then the merges' intermediate symbols) and
    merges.txt into `folder`; returns their paths."""
    words = sorted(set(words))
    tokens = list(SPECIAL_TOKENS) + [w + "</w>" for w in words]
    rules = learn_merges(words)
    tokens += sorted({s for a, b in rules for s in (a, b, a + b)} - set(tokens))
    ids = {t: i for i, t in enumerate(tokens)}
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    write_text(vocab, json.dumps(ids, ensure_ascii=False, indent=0))
    write_text(merges, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in rules))
    return vocab, merges


def build_tokenizer(texts: Iterable[str]):
    """A `CLIPTokenizer` with one token per word of `texts`, padding with `<|endoftext|>` as SD 1.x does.

    Saved with the pipeline (`save_pretrained`), it reloads from its own vocab.json and merges.txt."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as src:
        vocab, merges = write_vocabulary(src, caption_words(texts))
        tokenizer = CLIPTokenizer(vocab, merges, pad_token="<|endoftext|>", model_max_length=MAX_LENGTH)
    unknown = [w for w in caption_words(texts) if len(tokenizer.tokenize(w)) != 1]
    if unknown:  # would mean the merges above do not rebuild their own words
        raise RuntimeError(f"the demo tokenizer splits {unknown}; the learnt merges are wrong")
    return tokenizer
