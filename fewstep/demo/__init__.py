"""The demo: a procedural dataset of coloured shapes with captions, an analytic checker that scores
pictures against their prompts, and the trained demo model that ships with fewstep. NumPy and PIL only;
importing it imports no framework (`load_demo` loads fewstep's pipelines, and so a backend, when called).

    images, prompts, attrs = make_dataset(500, seed=0)      # uint8 [500, 32, 32, 3], captions, Attributes
    score_images(images, prompts)                           # {"n": 500, "all": 1.0, "all_se": 0.0, ...}
    parse_prompt("a red circle on a blue background")       # Attributes('circle', 'red', 'blue')
    pipe = load_demo("torch"); sample(pipe, [("a red circle on a blue background", 0)], **SAMPLING)
"""

from fewstep.demo.checker import classify, classify_images, score_images
from fewstep.demo.dataset import (COLOURS, SHAPES, Attributes, all_attributes, all_prompts, caption, coverage,
                                  evaluation_prompts, make_dataset, parse_prompt, render, sample_attributes,
                                  vocabulary)
from fewstep.demo.model import SAMPLING, check_prompt, load_demo, sample

__all__ = ["SHAPES", "COLOURS", "Attributes", "caption", "parse_prompt", "vocabulary", "render", "coverage",
           "sample_attributes", "make_dataset", "all_attributes", "all_prompts", "evaluation_prompts",
           "classify", "classify_images", "score_images", "SAMPLING", "check_prompt", "load_demo", "sample"]
