"""Running a job: one worker per process (or Ray actor) holds one pipeline and runs whole batches.

A batch is one pipeline call: the items' prompts, one `fewstep.Generator(seed)` per item (so each image is
the image `fewstep generate` makes with that seed and those settings), the batch's settings, its LoRAs
set with `set_adapters`. Its images are written atomically, then its done-record.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from fewstep.batch.job import Job, JobError
from fewstep.batch.plan import batches_for_rank, plan_batches
from fewstep.batch.store import TEMP_MARK, JobFolder, atomic_write, sha256

FAIL_AFTER_VARIABLE = "FEWSTEP_BATCH_FAIL_AFTER"   # testing: exit mid-batch after this many batches


@dataclass
class RunConfig:
    """Everything a worker needs to rebuild the same pipeline anywhere (a rank, a Ray actor)."""

    model: Optional[str] = None        # folder or hub id; None: the tiny demo model
    backend: str = "torch"
    dtype: str = "float32"
    device: Optional[str] = None
    batch_size: int = 4
    threads: int = 1
    deterministic: bool = False
    allow_different_env: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    def identity(self) -> Dict[str, Any]:
        """What a resume must match: the same model and batch size."""
        return {"model": self.model or "tiny:sd15", "batch_size": self.batch_size}


def resolve_model(model: Optional[str]) -> str:
    from fewstep.pipelines.loading import resolve_folder

    if model:
        return resolve_folder(model)
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
    """One pipeline and the job's LoRAs, loaded once; runs batches of the plan by index."""

    def __init__(self, job: Job, out: str, config: RunConfig, rank: int = 0):
        import fewstep
        from fewstep.batch.launch import pin_determinism

        self.job, self.config, self.rank = job, config, rank
        self.folder = JobFolder(out)
        self.batches = plan_batches(job, config.batch_size)
        pin_determinism(config.backend, config.threads, config.deterministic)
        self.pipe = fewstep.AutoPipelineForText2Image.from_pretrained(
            resolve_model(config.model), backend=config.backend, dtype=config.dtype, device=config.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler_config = self.pipe.scheduler.config
        self._load_loras()
        self._runs = 0

    def _load_loras(self) -> None:
        """Every LoRA the job names, loaded before the first image: a file that does not fit the model
        fails here, with the module it could not place, and nothing is generated."""
        files: Dict[str, tuple] = {}
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

    def _configure(self, settings: Dict[str, Any]) -> None:
        import fewstep

        cls = fewstep.TCDScheduler if settings["scheduler"] == "tcd" else fewstep.LCMScheduler
        if not isinstance(self.pipe.scheduler, cls):
            self.pipe.scheduler = cls.from_config(self._scheduler_config)
        if self._lora_names:
            loras = settings["loras"]
            self.pipe.set_adapters([lora.name for lora in loras], [lora.weight for lora in loras])

    def run_batch(self, u: int) -> Dict[str, Any]:
        """Generate batch `u`, write its images, then its record. Returns the record."""
        import fewstep

        batch = self.batches[u]
        settings = dict(batch[0].settings)
        self._configure(settings)
        start = time.perf_counter()
        kwargs = dict(prompt=[item.prompt for item in batch], num_inference_steps=settings["num_inference_steps"],
                      guidance_scale=settings["guidance_scale"], height=settings["height"], width=settings["width"],
                      generator=[fewstep.Generator(item.seed) for item in batch], output_type="pil")
        if settings["negative_prompt"] is not None:
            kwargs["negative_prompt"] = [settings["negative_prompt"]] * len(batch)
        if settings["scheduler"] == "tcd":
            kwargs["eta"] = settings["eta"]
        images = self.pipe(**kwargs).images
        seconds = time.perf_counter() - start
        fail_after = os.environ.get(FAIL_AFTER_VARIABLE)
        entries = []
        for i, (item, image) in enumerate(zip(batch, images)):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
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

    def _die_mid_write(self, item_id: str, data: bytes) -> None:
        """The injected failure: half of one image in a temporary file, then the process ends at once."""
        path = self.folder.image_path(item_id)
        with open(os.path.join(os.path.dirname(path), f"{TEMP_MARK}crash-{item_id}.png"), "wb") as f:
            f.write(data[: len(data) // 2])
        os._exit(17)


def run(job: Job, out: str, config: RunConfig, rank: Optional[int] = None, world_size: Optional[int] = None,
        progress: bool = True) -> Dict[str, Any]:
    """Run this process's share of the job (all of it in one process). Returns a summary."""
    from fewstep.batch.launch import detect_world

    if rank is None or world_size is None:
        rank, world_size = detect_world()
    folder = JobFolder(out)
    batches = plan_batches(job, config.batch_size)
    existed = folder.claim(job, batches, config.identity(), job_environment(config), config.allow_different_env)
    resumed = existed and bool(folder.done_batches(len(batches)))
    worker = BatchWorker(job, out, config, rank)
    mine = [u for u in batches_for_rank(len(worker.batches), rank, world_size) if not folder.is_done(u)]
    bar = _progress(len(job.items), _items_done(worker, folder)) if progress and rank == 0 else None
    ran = []
    for u in mine:
        worker.run_batch(u)
        ran.append(u)
        if bar is not None:
            bar.update(_items_done(worker, folder) - bar.n)
    manifest = folder.finish(job, len(worker.batches))
    if bar is not None:
        bar.update(_items_done(worker, folder) - bar.n)
        bar.close()
    return {"rank": rank, "world_size": world_size, "batches_run": ran, "resumed": resumed, "manifest": manifest,
            "folder": folder.out}


def _items_done(worker: BatchWorker, folder: JobFolder) -> int:
    return sum(len(worker.batches[u]) for u in folder.done_batches(len(worker.batches)))


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="fewstep batch", dynamic_ncols=True)
