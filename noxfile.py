"""CI's stacks: one nox session per supported dependency set (README, "Install and test").

- `pinned`: the one set where torch and MindSpore share a process (constraints.txt, forced by mindone 0.5.0);
  the whole suite but the MindSpore model-level comparisons that mindspore_low runs (ONLY_IN_MINDSPORE_LOW).
- `torch_latest`: torch alone with the newest diffusers, transformers, huggingface_hub, numpy, peft and
  accelerate, pinned exactly in constraints-torch-latest.txt so a run is reproducible; everything not marked
  `mindspore` or `parity`. `nox -s refresh_torch_latest` rewrites that file from the newest releases.
- `mindspore_low`: MindSpore 2.7.1, the low end of mindone 0.5.0's documented range, beside the pinned set;
  the tests marked `mindspore` or `parity`.

Each session also runs the README's first command and has the demo checker read the picture it wrote.
torch stays at 2.13.0 in every set: on the project's machines that pin takes a local CPU wheel, anything
else pulls gigabytes of CUDA packages.
"""

from __future__ import annotations

import os
import re
import tempfile

import nox

nox.options.sessions = ["pinned", "torch_latest", "mindspore_low"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"
PINNED = "constraints.txt"
LATEST = "constraints-torch-latest.txt"
MINDSPORE_LOW = "2.7.1"
# what a torch-only user gets unpinned; refresh_torch_latest asks for the newest of each
LATEST_PACKAGES = ["diffusers", "transformers", "huggingface_hub", "numpy", "peft", "accelerate"]
FIRST_PROMPT = "a green triangle on a pink background"


def _scratch() -> str:
    # not session.create_tmp(): that also points TMPDIR into .nox/<session>/tmp for every later command, and Ray's
    # socket paths under it grow too long for its workers to register (the Ray batch test then hangs)
    return tempfile.mkdtemp(prefix="fewstep-nox-")


def _first_command(session: nox.Session) -> None:
    """The README's first command, and the demo checker reading its picture as what was asked for."""
    out = os.path.join(_scratch(), "triangle.png")
    session.run("fewstep", "generate", FIRST_PROMPT, "--seed", "0", "-o", out)
    session.run("python", "-c", "import sys; from PIL import Image; from fewstep.demo import score_images; "
                "s = score_images([Image.open(sys.argv[1])], [sys.argv[2]]); print('checker:', s); "
                "sys.exit(0 if s['all'] == 1.0 else 'the checker does not read the first command as its prompt')",
                out, FIRST_PROMPT)


def _pytest(session: nox.Session, *marker: str) -> None:
    session.run("python", "-m", "pytest", "-q", *marker, *session.posargs,
                env={"FEWSTEP_REQUIRE_BACKENDS": os.environ.get("FEWSTEP_REQUIRE_BACKENDS", "1")})


# The MindSpore model-level comparisons of each feature (adapters, IP-Adapter, AnimateDiff, the combinations, image
# inputs, call options, the refiner, the recipes, LoRA casts, checkpoints, diffusers' pipeline tests and mindone's
# pipelines with fewstep's schedulers) run once per CI, in mindspore_low, on the MindSpore that mindone 0.5 documents.
# `pinned` (MindSpore 2.10 beside torch) runs the rest: the kernels fewstep supplies on CPU, the backend contract, the
# parity reports, loading, LoRA fusion, and the plain pipelines against torch and mindone. Those comparisons are
# 3-7x slower on 2.10's CPU kernels than on 2.7.1's and ran twice; with them the whole CI passed the hour.
ONLY_IN_MINDSPORE_LOW = (
    "tests/test_adapters_mindspore.py",
    "tests/test_combinations_mindspore.py",
    "tests/test_ip_adapter_mindspore.py",
    "tests/test_image_inputs_mindspore.py",
    "tests/test_animatediff.py::test_mindspore_matches_torch_and_mindone",
    "tests/test_animatediff.py::test_mindspore_motion_lora_matches_torch",
    "tests/test_diffusers_pipeline_suite.py::test_fewstep_mindspore",
    "tests/test_call_options.py::test_mindspore_matches_torch",
    "tests/test_sdxl_refiner.py::test_refiner_mindspore_matches_torch",
    "tests/test_sdxl_refiner.py::test_refiner_single_file_mindspore_matches_torch",
    "tests/test_recipes_pipelines.py::test_recipe_on_mindspore_matches_torch",
    "tests/test_pipelines_mindspore.py::test_mindspore_matches_torch_with_the_other_samplers",
    "tests/test_pipelines_mindspore.py::test_fewstep_samplers_inside_mindone_pipeline_match_mindones_own",
    "tests/test_lora_move.py::test_mindspore_casts_loras_with_the_weights",
    "tests/test_cli_single_file.py::test_parity_of_a_checkpoint_against_mindones_own_from_single_file",
    "tests/test_scheduler_interop.py::test_fewstep_scheduler_in_mindone_pipeline_gives_mindones_result",
    "tests/test_scheduler_interop.py::test_mindone_pipeline_with_fewstep_scheduler_saves_and_reloads",
    "tests/test_no_host_waits.py::test_no_step_reads_a_mindspore_tensor_on_the_host",
    "tests/test_tiny_vae.py::test_mindspore_tiny_vae_matches_torch",
    "tests/test_tiny_vae.py::test_mindspore_tiny_vae_matches_mindones_own_pipeline",
    "tests/test_jit_mindspore.py",
)
# torch.compile's tests compile the tiny UNet, VAE decoder and ControlNet with CPU inductor, minutes on two cores;
# they run once, in torch_latest: the newest diffusers is what a user who compiles runs.
ONLY_IN_TORCH_LATEST = ("tests/test_compile_torch.py",)


@nox.session
def pinned(session: nox.Session) -> None:
    """torch and MindSpore in one process, as constraints.txt pins them: the whole suite."""
    session.install("-c", PINNED, "-e", ".[torch,mindspore,ray,test]")
    _first_command(session)
    # pyproject's addopts leave out `slow`; ONLY_IN_MINDSPORE_LOW and ONLY_IN_TORCH_LATEST (above) run in those
    # sessions, not here as well.
    _pytest(session, *(arg for test in ONLY_IN_MINDSPORE_LOW + ONLY_IN_TORCH_LATEST for arg in ("--deselect", test)))


@nox.session
def torch_latest(session: nox.Session) -> None:
    """torch alone with the newest releases (as pinned in constraints-torch-latest.txt): no mindone, transformers 5,
    numpy 2."""
    session.install(TORCH)
    session.install("-c", LATEST, "-e", ".[torch,ray,test]")
    _first_command(session)
    _pytest(session, "-m", "not slow and not mindspore and not parity")


@nox.session
def mindspore_low(session: nox.Session) -> None:
    """MindSpore 2.7.1 with mindone 0.5.0 (and the rest of the pinned set): the MindSpore and parity tests."""
    constraints = os.path.join(_scratch(), "constraints-mindspore-low.txt")
    with open(PINNED, encoding="utf-8") as f:
        pinned_lines = f.read()
    with open(constraints, "w", encoding="utf-8") as f:
        f.write(re.sub(r"(?m)^mindspore==.*$", f"mindspore=={MINDSPORE_LOW}", pinned_lines))
    session.install("-c", constraints, "-e", ".[torch,mindspore,test]")
    session.run("python", "-c", f"import mindspore; assert mindspore.__version__ == {MINDSPORE_LOW!r}, "
                "mindspore.__version__")
    _first_command(session)
    _pytest(session, "-m", "(mindspore or parity) and not slow")


@nox.session(default=False)
def refresh_torch_latest(session: nox.Session) -> None:
    """Rewrite constraints-torch-latest.txt with the newest releases (torch kept at 2.13.0): install them
    unpinned in a fresh environment and record every installed version."""
    session.install(TORCH)
    session.install("-U", "-e", ".[torch,ray,test]", *LATEST_PACKAGES)
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    lines = sorted(line for line in frozen.splitlines() if "==" in line and not line.startswith("torch=="))
    header = ("# torch alone with the newest releases: the `torch_latest` CI stack (noxfile.py).\n"
              "# Written by `nox -s refresh_torch_latest`; torch itself stays at 2.13.0 (see noxfile.py).\n")
    with open(LATEST, "w", encoding="utf-8") as f:
        f.write(header + "\n".join(lines) + "\n")
    session.log(f"wrote {LATEST}: " + ", ".join(l for l in lines if l.split("==")[0].lower().replace("-", "_")
                                                  in LATEST_PACKAGES))
