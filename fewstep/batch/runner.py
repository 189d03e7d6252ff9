"""Running a job: one worker per process (or Ray actor) holds one pipeline and runs whole batches.

A batch is one pipeline call: the items' prompts, one `fewstep.Generator(seed)` per item (so each image is
the image `fewstep generate` makes with that seed and those settings), the batch's settings, its LoRAs
set with `set_adapters`. Its images are written atomically, then its done-record.

A run, in order: the job's names and the folder's records checked (nothing written); the model and LoRAs
loaded; the folder locked; the finished batches' images checked against their records (a broken batch runs
again); then each batch generated and written. job.json is written only after the first batch has been
generated, so no failure before it (a wrong model, a bad thread count, a size the model cannot make) leaves a
folder that refuses the corrected command. Ctrl-C leaves done-records only for finished batches.

With no model, the default of `fewstep generate`: the trained demo model (`fewstep.demo`, its few-step LoRA
fused) when it can draw every item's prompt, else the tiny random-weight SD 1.5 pipeline.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from fewstep.batch.job import Job, JobError
from fewstep.batch.plan import batches_for_rank, plan_batches
from fewstep.batch.store import TEMP_PREFIX, JobFolder, atomic_write, sha256

FAIL_AFTER_VARIABLE = "FEWSTEP_BATCH_FAIL_AFTER"   # testing: exit mid-batch after this many batches
DEMO = "demo"          # the models a run with no model uses (`default_model`), as job.json names them
TINY = "tiny:sd15"


@dataclass
class RunConfig:
    """Everything a worker needs to rebuild the same pipeline anywhere (a rank, a Ray actor)."""

    model: Optional[str] = None        # folder or hub id; None: `default` (the demo or the tiny model)
    backend: str = "torch"
    dtype: str = "float32"
    device: Optional[str] = None
    batch_size: int = 4
    threads: int = 1
    deterministic: bool = False
    allow_different_env: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)
    default: Optional[str] = None      # DEMO or TINY, for model None (`with_default` fills it from the job)

    def identity(self) -> Dict[str, Any]:
        """What a resume must match: the same model and batch size."""
        return {"model": self.model or self.default or TINY, "batch_size": self.batch_size}

    def check(self) -> None:
        """The numbers a run takes, checked before anything loads."""
        for name in ("threads", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JobError(f"{name} must be a positive integer, got {value!r} (--{name.replace('_', '-')}).")


def default_model(job: Job) -> Tuple[str, Optional[str]]:
    """(DEMO, None) when the trained demo model can draw every item: it is installed and every prompt is in
    its vocabulary (as `fewstep generate` with no --model draws with it); else (TINY, why not)."""
    from fewstep.demo import model

    if not model.available():
        return TINY, f"the trained demo model's weights are not installed in {model.WEIGHTS}"
    for item in job.items:
        try:
            model.check_prompt(item.prompt)
        except ValueError:
            return TINY, (f"{job.source}, line {item.line}: {item.prompt!r} is not a prompt the trained demo model "
                          f"can draw (coloured shapes, e.g. 'a red circle on a blue background')")
    return DEMO, None


def with_default(job: Job, config: RunConfig) -> RunConfig:
    """`config` with `default` filled in when no model is given (so every rank and actor loads the same)."""
    if config.model or config.default:
        return config
    return replace(config, default=default_model(job)[0])


def resolve_model(model: Optional[str], default: Optional[str] = None) -> str:
    """The pipeline folder to load: `model`'s, else the demo model's or the tiny pipeline's."""
    from fewstep.pipelines.loading import resolve_folder

    if model:
        return resolve_folder(model)
    if default == DEMO:
        from fewstep.demo import model as demo

        return str(demo.PIPELINE_FOLDER)
    from fewstep.testing import tiny_pipeline

    return tiny_pipeline("sd15")


_LIBRARIES = {"torch": ("torch", "diffusers", "transformers"), "mindspore": ("mindspore", "mindone")}


def job_environment(config: RunConfig) -> Dict[str, Any]:
    """What environment.json records and a resume compares: fewstep's and the backend's library versions,
    backend, device, dtype and the determinism settings. Computed before any model loads, so a folder that
    cannot be resumed is refused at once."""
    import importlib

    import numpy
    import fewstep

    versions = {"numpy": numpy.__version__}
    for name in _LIBRARIES.get(config.backend, ()):
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    return {"fewstep": fewstep.__version__, "versions": versions, "backend": config.backend,
            "device": str(config.device or "default"), "dtype": config.dtype, "threads": int(config.threads),
            "deterministic": bool(config.deterministic)}


class BatchWorker:
    """One pipeline and the job's LoRAs, loaded once; runs batches of the plan by index. Writes nothing
    until a batch is written (`write` / `run_batch`)."""

    def __init__(self, job: Job, out: str, config: RunConfig, rank: int = 0):
        import fewstep
        from fewstep.batch.launch import pin_determinism

        config = with_default(job, config)
        self.job, self.config, self.rank = job, config, rank
        self.folder = JobFolder(out)
        self.batches = plan_batches(job, config.batch_size)
        pin_determinism(config.backend, config.threads, config.deterministic)
        self.pipe = fewstep.AutoPipelineForText2Image.from_pretrained(
            resolve_model(config.model, config.default), backend=config.backend, dtype=config.dtype,
            device=config.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler_config = self.pipe.scheduler.config
        self._check_steps()
        self._load_loras()
        self._runs = 0

    def _check_steps(self) -> None:
        """Every item's step count against this model's scheduler (at most its original_inference_steps), before
        the first image: else an item with 60 steps fails only when its batch comes up, after others are done."""
        tried = set()
        for item in self.job.items:
            key = (item.setting("scheduler"), item.setting("recipe"), item.setting("num_inference_steps"))
            if key in tried:
                continue
            tried.add(key)
            try:
                scheduler, args = self._scheduler_for(dict(item.settings))
                if "timesteps" in args:
                    scheduler.set_timesteps(timesteps=args["timesteps"])
                else:
                    scheduler.set_timesteps(args["num_inference_steps"])
            except ValueError as err:
                raise JobError(f"{self.job.source}, line {item.line}: {' '.join(str(err).split())}") from None

    def ready(self) -> bool:
        """For the Ray driver: True once the actor has loaded its pipeline (its __init__ has run)."""
        return True

    def _base_loras(self) -> Dict[str, tuple]:
        """LoRAs that every item carries: the demo model's few-step LoRA, fused at weight 1 as `fewstep
        generate` fuses it, when the demo model is the default in use."""
        if self.config.model or self.config.default != DEMO:
            return {}
        from fewstep.demo import model as demo

        return {demo.LORA_NAME: (str(demo.LORA_FOLDER), demo.LORA_FILE)}

    def _load_loras(self) -> None:
        """Every LoRA the job names, loaded before the first image: a file that does not fit the model
        fails here, with the module it could not place, and nothing is generated."""
        self._base = self._base_loras()
        files: Dict[str, tuple] = dict(self._base)
        for item in self.job.items:
            for lora in item.setting("loras"):
                file = (lora.path, lora.weight_name)
                if files.setdefault(lora.name, file) != file:
                    raise JobError(f"{self.job.source}, line {item.line}: two LoRA files share the name {lora.name!r} "
                                   f"({files[lora.name][0]} and {lora.path}); rename one.")
        for name, (path, weight_name) in files.items():
            try:
                self.pipe.load_lora_weights(path, weight_name=weight_name, adapter_name=name)
            except ValueError as err:  # LoraError is a ValueError
                raise JobError(f"LoRA {path!r} does not fit the model: {err}") from err
        self._lora_names = list(files)

    def _scheduler_for(self, settings: Dict[str, Any]):
        """(a new scheduler for the settings, built from the model's own config, the call's step arguments): the
        recipe's (fewstep.recipes), else TCD or LCM."""
        import fewstep

        if settings["recipe"] is not None:
            from fewstep import recipes

            plan = recipes.plan(settings["recipe"], settings["num_inference_steps"])
            steps = {k: v for k, v in plan.call_arguments().items() if k in ("num_inference_steps", "timesteps")}
            return recipes.build_scheduler(plan, self._scheduler_config), steps
        cls = fewstep.TCDScheduler if settings["scheduler"] == "tcd" else fewstep.LCMScheduler
        return cls.from_config(self._scheduler_config), {"num_inference_steps": settings["num_inference_steps"]}

    def _configure(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        """Set the batch's scheduler (rebuilt only when it changes); returns its step arguments."""
        key = (settings["recipe"], settings["num_inference_steps"]) if settings["recipe"] else settings["scheduler"]
        scheduler, args = self._scheduler_for(settings)
        if getattr(self, "_scheduler_key", None) != key:
            self.pipe.scheduler = scheduler
            self._scheduler_key = key
        if self._lora_names:
            loras = settings["loras"]
            # the base LoRAs first, at weight 1, then the item's (fused from the kept base weights each time)
            self.pipe.set_adapters([*self._base, *(lora.name for lora in loras)],
                                   [*(1.0 for _ in self._base), *(lora.weight for lora in loras)])
        return args

    def generate(self, u: int) -> List[bytes]:
        """Batch `u`'s images, as PNG bytes in the batch's order; writes nothing."""
        import fewstep

        batch = self.batches[u]
        settings = dict(batch[0].settings)
        steps = self._configure(settings)
        kwargs = dict(prompt=[item.prompt for item in batch], **steps,
                      guidance_scale=settings["guidance_scale"], height=settings["height"], width=settings["width"],
                      generator=[fewstep.Generator(item.seed) for item in batch], output_type="pil")
        if settings["negative_prompt"] is not None:
            kwargs["negative_prompt"] = [settings["negative_prompt"]] * len(batch)
        if settings["scheduler"] == "tcd" or settings["recipe"] is not None:
            kwargs["eta"] = settings["eta"]  # a recipe's (or 0.0), as `fewstep generate --recipe` passes it
        pngs = []
        for image in self.pipe(**kwargs).images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def write(self, u: int, pngs: List[bytes], seconds: float) -> Dict[str, Any]:
        """Write batch `u`'s images, then its record (last: the batch is done only once it exists)."""
        batch = self.batches[u]
        fail_after = os.environ.get(FAIL_AFTER_VARIABLE)
        entries = []
        for i, (item, data) in enumerate(zip(batch, pngs)):
            if fail_after is not None and self._runs >= int(fail_after) and i == len(batch) - 1:
                self._die_mid_write(item.id, data)
            atomic_write(self.folder.image_path(item.id), data)
            entries.append({**item.record(), "file": os.path.relpath(self.folder.image_path(item.id), self.folder.out),
                            "sha256": sha256(data), "seconds": seconds / len(batch)})
        record = {"batch": u, "ids": [item.id for item in batch], "items": entries, "seconds": seconds,
                  "rank": self.rank}
        self.folder.write_record(u, record)
        self.folder.log(self.rank, f"batch {u}: {len(batch)} items in {seconds:.2f} s")
        self._runs += 1
        return record

    def run_batch(self, u: int) -> Dict[str, Any]:
        """Generate batch `u`, write its images, then its record. Returns the record."""
        start = time.perf_counter()
        pngs = self.generate(u)
        return self.write(u, pngs, time.perf_counter() - start)

    def _die_mid_write(self, item_id: str, data: bytes) -> None:
        """The injected failure: half of one image in a temporary file (named as `fewstep.core.files` names
        them), then the process ends at once."""
        handle, _ = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".png", dir=os.path.dirname(self.folder.image_path(item_id)))
        os.write(handle, data[: len(data) // 2])
        os.close(handle)
        os._exit(17)


def run(job: Job, out: str, config: RunConfig, rank: Optional[int] = None, world_size: Optional[int] = None,
        progress: bool = True) -> Dict[str, Any]:
    """Run this process's share of the job (all of it in one process). Returns a summary; its "repaired"
    lists the finished images found missing or changed (one line each, naming the item's line), whose
    batches this run made again."""
    from fewstep.batch.launch import detect_world

    started = time.time()
    config.check()
    if rank is None or world_size is None:
        rank, world_size = detect_world()
    config = with_default(job, config)
    folder = JobFolder(out)
    batches = plan_batches(job, config.batch_size)
    folder.check_names(job)
    environment = job_environment(config)
    claim = (job, batches, config.identity(), environment, config.allow_different_env)
    folder.check(*claim)   # another job's folder is refused before the model loads
    worker = BatchWorker(job, out, config, rank)
    with folder.locked(rank, world_size):
        existed = folder.check(*claim)   # again, now that no other run can change it
        repaired = folder.verify(job, batches, batches_for_rank(len(batches), rank, world_size))
        for line in repaired:
            folder.log(rank, line)
        resumed = existed and bool(folder.done_batches(len(batches)))
        mine = [u for u in batches_for_rank(len(batches), rank, world_size) if not folder.is_done(u)]
        bar = _progress(len(job.items), _items_done(worker, folder)) if progress and rank == 0 else None
        ran = []
        try:
            for u in mine:
                start = time.perf_counter()
                pngs = worker.generate(u)
                if not existed:  # the model loaded and a batch ran: now the folder is this job's
                    folder.claim(*claim)
                    existed = True
                worker.write(u, pngs, time.perf_counter() - start)
                ran.append(u)
                if bar is not None:
                    bar.update(_items_done(worker, folder) - bar.n)
            manifest = folder.finish(job, len(batches), started)
        finally:
            if bar is not None:
                bar.update(_items_done(worker, folder) - bar.n)
                bar.close()
    return {"rank": rank, "world_size": world_size, "batches_run": ran, "resumed": resumed, "manifest": manifest,
            "folder": folder.out, "repaired": repaired}


def _items_done(worker: BatchWorker, folder: JobFolder) -> int:
    return sum(len(worker.batches[u]) for u in folder.done_batches(len(worker.batches)))


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="fewstep batch", dynamic_ncols=True)
