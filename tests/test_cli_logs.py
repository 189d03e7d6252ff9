"""What the command line prints: no deprecation warning and no third-party chatter in a real run (fresh
processes, torch and MindSpore), `--quiet` prints only the output path, `--verbose` lets the libraries
through, and `fewstep.cli.main` in a program leaves no filter behind. Hub ids honour HF_ENDPOINT and
HF_HUB_OFFLINE, and the error says which applied."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from fewstep.cli import logs

# fewstep's own stdout lines in a default `generate` run (the trained demo model, its LoRA fused)
_OURS = ("settings {", "No --model given", "seed ", "wrote ")


def _generate(tmp_path, *flags, env=None):
    out = tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-m", "fewstep", "generate", "a red circle on a blue background", "--seed", "0", "-o", str(out),
                           "--steps", "2", *flags], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, **(env or {})), timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done.stdout, done.stderr


def _progress_bar(line: str) -> bool:
    return "it/s]" in line or "s/it]" in line or "%|" in line


@pytest.mark.torch
def test_a_run_prints_no_deprecation_and_no_library_chatter(tmp_path):
    _, stdout, stderr = _generate(tmp_path)
    assert "deprecated" not in (stdout + stderr).lower()
    for line in stdout.splitlines():
        assert line.startswith(_OURS), f"not fewstep's line on stdout: {line!r}"
    for line in stderr.replace("\r", "\n").splitlines():
        assert not line.strip() or _progress_bar(line), f"not a progress bar on stderr: {line!r}"


@pytest.mark.mindspore
def test_quiet_prints_only_the_output_path_on_mindspore(tmp_path):
    """MindSpore and mindone are the talkative ones (a MindSpore deprecation log, mindone's "Config not
    found" prints and FutureWarning at import): with --quiet nothing but the path remains, so none of
    that chatter and no deprecation reaches either stream. (That --verbose lets it through, and that the
    default level hides the same chatter, is shown without a fresh process below.)"""
    out, stdout, stderr = _generate(tmp_path, "--backend", "mindspore", "--quiet")
    assert stdout == f"{out}\n" and stderr == ""


def _library_module(name: str) -> dict:
    """The globals of a module called `name` whose functions print and warn, as a library's would."""
    namespace = {"__name__": name}
    exec("import warnings\n"
         "def chatter():\n"
         "    print('library chatter')\n"
         "    warnings.warn(__name__ + ' deprecation', FutureWarning)\n", namespace)
    return namespace


def test_library_chatter_is_held_and_fewsteps_lines_pass(capsys):
    library = _library_module("mindone.transformers.fake")
    other = _library_module("users_plugin")  # not a library the CLI drives
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with logs.command_output("normal"):
            library["chatter"]()
            logs.say("fewstep line")
            other["chatter"]()
    # stdout carries fewstep's lines only; a warning is hidden only when a driven library raises it
    assert capsys.readouterr().out == "fewstep line\n"
    assert [str(w.message) for w in caught] == ["users_plugin deprecation"]


def test_verbose_hides_nothing_and_filters_are_restored_after_a_command(capsys):
    library = _library_module("transformers.fake")
    env_before = os.environ.get("GLOG_v")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with logs.command_output("verbose"):
            library["chatter"]()
        with logs.command_output("quiet"):
            logs.say("hidden")
            logs.wrote("x.png")
        library["chatter"]()  # after the command: the library's warning shows again in a program
    out = capsys.readouterr().out
    assert out == f"library chatter\n{os.path.abspath('x.png')}\nlibrary chatter\n"
    assert [str(w.message) for w in caught] == ["transformers.fake deprecation"] * 2
    assert os.environ.get("GLOG_v") == env_before and "TQDM_DISABLE" not in os.environ


def test_held_chatter_is_shown_when_the_command_fails(capsys):
    library = _library_module("diffusers.fake")
    with pytest.raises(RuntimeError):
        with logs.command_output("normal"):
            library["chatter"]()
            raise RuntimeError("loading failed")
    captured = capsys.readouterr()
    assert captured.out == "" and "library chatter" in captured.err


def _hub_error(tmp_path, env) -> str:
    done = subprocess.run([sys.executable, "-m", "fewstep", "generate", "x", "--model", "fewstep-tests/no-such-model",
                           "-o", str(tmp_path / "x.png"), "--quiet"], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)
    assert done.returncode == 2 and done.stdout == "" and not (tmp_path / "x.png").exists()
    return done.stderr


def test_hub_ids_honour_hf_endpoint_and_hf_hub_offline(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    assert "the hub at http://127.0.0.1:9 was asked (set HF_ENDPOINT to use a mirror)" in _hub_error(tmp_path, env)
    env["HF_HUB_OFFLINE"] = "1"
    assert "HF_HUB_OFFLINE is set, so only the local cache was searched" in _hub_error(tmp_path, env)
