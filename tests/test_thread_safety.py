"""One call at a time per pipeline (issue 24, deliverable 7): while a call runs, another thread's call, LoRA or
IP-Adapter change or `to()` on the same pipeline (or one sharing its UNet and scheduler) raises RuntimeError at
once, and the running call's image is what it would have been alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from tests.lora_cases import make_lora, peft_file, targets_from_folder

pytestmark = pytest.mark.torch

CALL = dict(prompt="a fox", num_inference_steps=2, guidance_scale=0.0, height=32, width=32, output_type="np")
BUSY = r"^This pipeline is already running a call in another thread; use one pipeline per thread .* or call it " \
       r"from one thread\.$"
WAIT = 60  # seconds: only reached when something hangs


@pytest.fixture(scope="module")
def pipe():
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    p.set_progress_bar_config(disable=True)
    p.load_lora_weights(peft_file(make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=0))[0], adapter_name="a")
    return p


def weights(p) -> dict:
    return {(n, path): p.ops.to_numpy(c.named_weight(path)).copy()
            for n, c in p._lora_components().items() for path in c.lora_targets()}


class BlockedCall:
    """A call of `pipe` in a thread, held inside its first step's callback until `release()`."""

    def __init__(self, pipe, seed: int = 0):
        self.inside, self.go = threading.Event(), threading.Event()
        self.result, self.error = None, None

        def callback(p, i, t, tensors):
            self.inside.set()
            assert self.go.wait(WAIT)
            return tensors

        def run():
            try:
                self.result = pipe(generator=seed, callback_on_step_end=callback, **CALL).images
            except BaseException as err:  # noqa: BLE001 - reported by the test
                self.error = err

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.inside.wait(WAIT), "the call never reached its callback"

    def release(self):
        self.go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.result


def test_second_thread_is_refused_and_the_running_call_is_unchanged(pipe):
    alone = pipe(generator=0, **CALL).images
    before = weights(pipe)
    blocked = BlockedCall(pipe)
    try:
        img2img = pipelines.StableDiffusionImg2ImgPipeline.from_pipe(pipe)  # shares the UNet and scheduler
        same_models = pipelines.StableDiffusionPipeline(**pipe.components)
        attempts = [
            lambda: pipe(generator=1, **CALL),
            lambda: same_models(generator=1, **CALL),
            lambda: img2img(image=np.zeros((32, 32, 3), np.float32), generator=1, **CALL),
            lambda: pipe.set_adapters("a", 0.3),
            lambda: pipe.fuse_lora(lora_scale=0.5),
            lambda: pipe.unfuse_lora(),
            lambda: pipe.load_lora_weights(peft_file(make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=1))[0],
                                           adapter_name="b"),
            lambda: pipe.delete_adapters("a"),
            lambda: pipe.unload_lora_weights(),
            lambda: pipe.set_ip_adapter_scale(0.5),
            lambda: pipe.to("cpu", dtype="float16"),
        ]
        for attempt in attempts:
            with pytest.raises(RuntimeError, match=BUSY):
                attempt()
            assert pipe.get_active_adapters() == ["a"] and set(pipe.get_list_adapters()) == {"unet", "text_encoder"}
    finally:
        image = blocked.release()
    # nothing the refused attempts asked for happened: the call gives what it gives alone, the weights are the same
    assert image.tobytes() == alone.tobytes()
    assert all(weights(pipe)[k].tobytes() == v.tobytes() for k, v in before.items())
    assert pipe.unet.dtype == "float32"


def test_the_pipeline_is_free_again_after_a_call_ends_or_fails(pipe):
    BlockedCall(pipe).release()
    pipe(generator=0, **CALL)  # ended normally: free

    def fail(p, i, t, tensors):
        raise KeyError("stop")

    with pytest.raises(KeyError, match="stop"):
        pipe(generator=0, callback_on_step_end=fail, **CALL)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("images", pipe(generator=0, **CALL).images))
    worker.start()
    worker.join(WAIT)
    assert out["images"].shape == (1, 32, 32, 3)  # another thread may call it once the failed call is gone


def test_a_call_from_inside_its_own_callback_is_refused_but_lora_changes_are_not(pipe):
    seen = {}

    def nested(p, i, t, tensors):
        with pytest.raises(RuntimeError, match=r"^This thread is already running a call on this pipeline \(called "
                                               r"again from a callback\?\)"):
            p(generator=1, **CALL)
        p.set_adapters("a", 0.5)  # the same thread may change LoRA weights between steps, as in diffusers
        seen["weight"] = True
        return tensors

    pipe(generator=0, callback_on_step_end=nested, **CALL)
    pipe.set_adapters("a", 1.0)
    assert seen == {"weight": True}


def test_four_threads_either_get_their_sequential_image_or_a_clear_error(pipe):
    seeds = [0, 1, 2, 3]
    alone = {s: pipe(generator=s, **CALL).images for s in seeds}
    start = threading.Barrier(len(seeds))
    results = {}

    def run(seed):
        start.wait(WAIT)
        try:
            results[seed] = pipe(generator=seed, **CALL).images
        except RuntimeError as err:
            results[seed] = err

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(results) == seeds
    images = {s: r for s, r in results.items() if not isinstance(r, RuntimeError)}
    assert images, "at least the first thread to start runs"
    for seed, result in results.items():
        if isinstance(result, RuntimeError):
            assert "already running a call in another thread" in str(result)
        else:
            assert result.tobytes() == alone[seed].tobytes(), seed
