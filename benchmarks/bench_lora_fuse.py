"""LoRA load + fuse, and adapter switching, on an SD 1.5-size UNet: fewstep vs diffusers + PEFT (torch CPU).

The UNet has the real SD 1.5 config with random weights (860M parameters); the LoRA is synthetic,
rank 64 on every Linear and Conv2d of it (282 modules, 68M factor parameters), written once as a
PEFT-format safetensors file (lora_alpha 32, so the scale 0.5 is really applied) and read by both.

- load + fuse: fewstep `load_lora_weights(file)` (which fuses) vs diffusers
  `load_lora_weights(file)` + `fuse_lora()`, in the same process, on the same UNet; each side's runs
  back to back after a warm-up run, each from the base weights (fewstep `unload_lora_weights`,
  diffusers `unfuse_lora` + `unload_lora_weights`, neither timed). `--cold N`: also each side's first
  load + fuse in a fresh process (N processes each, alternating), what a user's first load costs.
- switch: with two such adapters loaded and fused, change the combination ([a, b] at [1.0, 0.8] <->
  [a] at 1.0): fewstep `set_adapters` (re-fuses from the saved base) vs diffusers' fused equivalent
  `unfuse_lora` + `set_adapters` + `fuse_lora`. diffusers' bare `set_adapters` (which only changes the
  scales of unfused PEFT layers, making every later step slower) is printed for context.
  load + fuse and fewstep's switch are timed for each `--keep-base` mode (where the unfused bases are kept:
  "file", the default, read back from the UNet's safetensors files, which the UNet is saved to first
  and indexed from; "host" in NumPy; "device" beside the weights).
- `--mindspore`: fewstep load + fuse of the same file on mindone's UNet of the same config.

Medians over repeats; the first fused weights of both are compared before timing.

    python benchmarks/bench_lora_fuse.py [--repeats 3] [--switch-repeats 3] [--cold N] [--mindspore] [--threads N]
        [--keep-base file,host,device]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
RANK, ALPHA = 64, 32.0
CHECKED = 8  # modules whose fused weights are compared between fewstep and diffusers


def torch_unet():
    """diffusers' UNet with the SD 1.5 config; weights N(0, 0.02), filled directly (no init pass)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    unet = unet.to_empty(device="cpu").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return unet


def write_lora(shapes, path: str, seed: int) -> int:
    """A PEFT-format rank-RANK LoRA on every module of `shapes` (path -> weight shape); returns the
    number of factor parameters."""
    import safetensors.numpy

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        tensors[f"unet.{name}.lora_A.weight"] = (rng.standard_normal((RANK,) + shape[1:], np.float32)
                                                 / np.sqrt(np.prod(shape[1:])))
        tensors[f"unet.{name}.lora_B.weight"] = rng.standard_normal((shape[0], RANK) + ((1, 1) if len(shape) == 4 else ()),
                                                                    np.float32) * 0.01
    config = {"unet.r": RANK, "unet.lora_alpha": ALPHA, "unet.target_modules": sorted(shapes),
              "unet.rank_pattern": {}, "unet.alpha_pattern": {}, "unet.use_dora": False, "unet.lora_bias": False}
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return sum(v.size for v in tensors.values())


def unet_only(backend: str, unet_module):
    """The smallest fewstep object with the LoRA methods: the pipelines' own LoraMixin over one UNet
    adapter (the text encoders and VAE of a pipeline play no part in a UNet-only LoRA)."""
    from fewstep.backends import get_backend
    from fewstep.pipelines.lora import LoraMixin

    adapters = importlib.import_module(f"fewstep.backends.{backend}_components")
    unet = adapters.TorchUNet(unet_module) if backend == "torch" else adapters.MindSporeUNet(unet_module)

    class UNetOnly(LoraMixin):
        def __init__(self):
            self.ops = get_backend(backend)
            self.unet = unet

    return UNetOnly()


def diffusers_pipeline(unet):
    """A diffusers StableDiffusionPipeline around the big UNet (tiny VAE / text encoder, untouched)."""
    import diffusers

    from fewstep.testing import tiny_pipeline

    tiny = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), safety_checker=None,
                                                             requires_safety_checker=False)
    return diffusers.StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                             unet=unet, scheduler=tiny.scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)


def cold_run(side: str) -> float:
    """One load + fuse by one side, the first in a fresh process (what a user's first load costs)."""
    out = subprocess.run([sys.executable, __file__, "--cold-side", side], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cold_side(side: str) -> None:
    unet = torch_unet()
    ours = unet_only("torch", unet)
    with tempfile.TemporaryDirectory(prefix="fewstep-lora-bench-") as workdir:
        write_lora(ours.unet.lora_targets(), os.path.join(workdir, "a.safetensors"), seed=1)
        if side == "ours":
            elapsed = timed(lambda: ours.load_lora_weights(os.path.join(workdir, "a.safetensors")))
        else:
            ref = diffusers_pipeline(unet)
            elapsed = timed(lambda: (ref.load_lora_weights(workdir, weight_name="a.safetensors"), ref.fuse_lora()))
    print(elapsed)


def timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switch-repeats", type=int, default=3)
    parser.add_argument("--mindspore", action="store_true", help="also time fewstep on mindone's UNet")
    parser.add_argument("--cold", type=int, default=0, metavar="N",
                        help="also time each side's first load + fuse in N fresh processes")
    parser.add_argument("--cold-side", choices=("ours", "ref"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--keep-base", default="file,host,device",
                        help="keep_base modes load + fuse and the switch are timed in (the first: the agreement check)")
    args = parser.parse_args()
    if args.cold_side:
        return cold_side(args.cold_side)
    with tempfile.TemporaryDirectory(prefix="fewstep-lora-bench-") as workdir:
        run(args, workdir)


def run(args, workdir: str) -> None:
    import diffusers
    import torch

    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # diffusers, on a 2nd adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    unet = torch_unet()
    ours = unet_only("torch", unet)
    modes = args.keep_base.split(",")

    def index_files():
        """Save the UNet's weights as they are now and index them, for keep_base="file" to read bases back
        from: as if it had been loaded from them. Done again before each "file" section, as diffusers'
        inexact unfuse in between leaves weights that differ from the files by an ulp (fewstep would
        rightly keep host copies of them)."""
        from fewstep.core.lora.weight_files import WeightFiles

        folder = os.path.join(workdir, "unet")
        shutil.rmtree(folder, ignore_errors=True)
        unet.save_pretrained(folder, safe_serialization=True)
        ours.unet.weight_files = WeightFiles.scan(folder)

    ours.fuse_lora(keep_base=modes[0])
    shapes = ours.unet.lora_targets()
    file_a, file_b = (os.path.join(workdir, f"{n}.safetensors") for n in ("a", "b"))
    n_params = write_lora(shapes, file_a, seed=1)
    write_lora(shapes, file_b, seed=2)
    ref = diffusers_pipeline(unet)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads; "
          f"SD 1.5 UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M parameters; LoRA rank {RANK} on "
          f"{len(shapes)} modules ({n_params / 1e6:.1f}M parameters, {os.path.getsize(file_a) / 2**20:.0f} MiB); "
          f"setup {time.perf_counter() - start:.0f}s")

    def ours_load():
        ours.load_lora_weights(file_a, adapter_name="a")

    def ref_load():
        ref.load_lora_weights(workdir, weight_name="a.safetensors", adapter_name="a")
        ref.fuse_lora()

    def ref_reset():
        ref.unfuse_lora()
        ref.unload_lora_weights()

    # agreement first: a few modules' fused weights from both
    checked = sorted(shapes)[:: max(len(shapes) // CHECKED, 1)]
    ours_load()
    mine = {p: ours.unet.named_weight(p).clone() for p in checked}
    ours.unload_lora_weights()
    ref_load()
    def weight(path):  # after diffusers' fuse, the module is a PEFT layer around the original one
        module = unet.get_submodule(path)
        return getattr(module, "base_layer", module).weight

    worst = max(float((weight(p) - mine[p]).abs().max() / mine[p].abs().max()) for p in checked)
    ref_reset()
    print(f"max |fewstep - diffusers| / max |diffusers| over {len(checked)} fused weights: {worst:.2e}")

    # Warm: each side's runs back to back (a warm-up run first), so each reuses the memory its own
    # previous run freed. Interleaving the two sides instead makes each pay the other's allocation
    # pattern (on this VM, first-touch page faults cost ~0.5-2 s/GB), which measures the machine.
    times = {}
    sides = [(mode, ours_load, ours.unload_lora_weights) for mode in modes] + [("ref", ref_load, ref_reset)]
    for name, run, reset in sides:
        if name == "file":
            index_files()
        if name != "ref":
            ours.fuse_lora(keep_base=name)
        times[name] = []
        for _ in range(args.repeats + 1):
            times[name].append(timed(run))
            reset()
    m_ref = statistics.median(times["ref"][1:])
    for mode in modes:
        m_ours = statistics.median(times[mode][1:])
        print(f"load + fuse  keep_base={mode:6s} diffusers+peft median {m_ref:6.2f} s   fewstep median {m_ours:6.2f} s   "
              f"ratio {m_ours / m_ref:.3f}   (warm-up run: diffusers {times['ref'][0]:.1f} s, fewstep "
              f"{times[mode][0]:.1f} s; timed: diffusers {', '.join(f'{t:.1f}' for t in times['ref'][1:])}; "
              f"fewstep {', '.join(f'{t:.1f}' for t in times[mode][1:])})")
    if args.cold:
        cold = {"ours": [], "ref": []}
        for i in range(args.cold):
            for side in (("ours", "ref") if i % 2 else ("ref", "ours")):
                cold[side].append(cold_run(side))
        c_ours, c_ref = statistics.median(cold["ours"]), statistics.median(cold["ref"])
        print(f"load + fuse, cold (first in a fresh process) diffusers+peft median {c_ref:6.2f} s   fewstep median "
              f"{c_ours:6.2f} s   ratio {c_ours / c_ref:.3f}   (runs: diffusers "
              f"{', '.join(f'{t:.1f}' for t in cold['ref'])}; fewstep {', '.join(f'{t:.1f}' for t in cold['ours'])})")

    if args.switch_repeats:
        combos = [(["a", "b"], [1.0, 0.8]), (["a"], [1.0])]
        switch = {"ref": [], "ref_bare": []}
        for mode in modes:
            if mode == "file":
                index_files()
            ours.fuse_lora(keep_base=mode)
            ours.load_lora_weights(file_a, adapter_name="a")
            ours.load_lora_weights(file_b, adapter_name="b")
            ours.set_adapters(["a"], [1.0])
            kept = sorted({type(v).__name__ for v in ours._lora_state().saved.values()})
            switch[mode] = []
            for i in range(args.switch_repeats):
                names, weights = combos[i % 2]
                switch[mode].append(timed(lambda: ours.set_adapters(names, weights)))
            ours.unload_lora_weights()
            print(f"switch       fewstep set_adapters keep_base={mode:6s} median "
                  f"{statistics.median(switch[mode]):6.2f} s   (bases kept as {kept})", flush=True)
        ours.fuse_lora(keep_base="device")
        ref.load_lora_weights(workdir, weight_name="a.safetensors", adapter_name="a")
        ref.load_lora_weights(workdir, weight_name="b.safetensors", adapter_name="b")
        ref.set_adapters(["a"], [1.0])
        ref.fuse_lora()

        def ref_switch(names, weights):
            ref.unfuse_lora()
            ref.set_adapters(names, weights)
            ref.fuse_lora()

        for i in range(args.switch_repeats):
            names, weights = combos[i % 2]
            switch["ref"].append(timed(lambda: ref_switch(names, weights)))
        ref.unfuse_lora()
        for i in range(args.switch_repeats):
            names, weights = combos[i % 2]
            switch["ref_bare"].append(timed(lambda: ref.set_adapters(names, weights)))
        ref.unload_lora_weights()
        s_ref, s_bare = (statistics.median(switch[k]) for k in ("ref", "ref_bare"))
        print(f"switch       diffusers unfuse+set_adapters+fuse median {s_ref:6.2f} s   (diffusers set_adapters alone, "
              f"unfused: {s_bare:.3f} s)")
        for mode in modes:
            s_ours = statistics.median(switch[mode])
            extra = (f"   {s_ours / statistics.median(switch['device']):.2f}x keep_base='device'"
                     if "device" in modes else "")
            print(f"switch       fewstep set_adapters keep_base={mode:6s} median {s_ours:6.2f} s   ratio to diffusers "
                  f"{s_ours / s_ref:.3f}{extra}")

    if args.mindspore:
        del ours, ref, unet
        gc.collect()
        from fewstep.backends import get_backend

        get_backend("mindspore")
        from fewstep.backends.mindspore_cpu import install_cpu_kernels

        install_cpu_kernels()  # before mindone is imported (see fewstep.backends.mindspore_cpu)
        from mindone.diffusers import UNet2DConditionModel as MSUNet

        ms_ours = unet_only("mindspore", MSUNet(**SD15_UNET))
        runs = []
        for _ in range(args.repeats + 1):
            runs.append(timed(lambda: ms_ours.load_lora_weights(file_a, adapter_name="a")))
            ms_ours.unload_lora_weights()
        print(f"MindSpore    fewstep load + fuse median {statistics.median(runs[1:]):6.2f} s   (warm-up run "
              f"{runs[0]:.1f} s; timed: {', '.join(f'{t:.1f}' for t in runs[1:])})")


if __name__ == "__main__":
    main()
