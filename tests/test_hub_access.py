"""Hub access (fewstep.pipelines.hub): a stalled endpoint fails within FEWSTEP_HUB_TIMEOUT, in one line naming
it, and a pipeline id fetches only the files the pipeline loads.

Every server here listens on 127.0.0.1 and is stopped when its test ends. huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE when it is imported (and conftest sets HF_HUB_OFFLINE=1 for this process), so the commands that
reach a server run as a user runs them: a fresh `python -m fewstep ...` process with those variables set and
its own empty cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("huggingface_hub")

from fewstep.pipelines import hub  # noqa: E402

TIMEOUT = 2  # FEWSTEP_HUB_TIMEOUT in the stalled-server tests
SLACK = 8  # process exit and the machine's load, on top of the timeout
SHA = "0123456789abcdef0123456789abcdef01234567"


# --- servers --------------------------------------------------------------------------------------------
class StalledServer:
    """Accepts connections and never answers; records when each came."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.accepted, self.connections, self.stopping = [], [], threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self.connections.append(conn)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


class FakeHub:
    """The hub API that huggingface_hub's repo_info and hf_hub_download use, for one repository:
    GET /api/models/REPO[/revision/REV] (its listing), HEAD and GET /REPO/resolve/REV/PATH (a file).
    Records every request as (method, path)."""

    def __init__(self, repo: str, files: dict):
        self.repo, self.files, self.requests = repo, files, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._answer(self, body=False)

            def do_GET(self):
                server._answer(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def fetched(self):
        """The repository files whose content was sent (GET of a resolve URL)."""
        prefix = f"/{self.repo}/resolve/"
        return sorted(p[len(prefix):].split("/", 1)[1] for m, p in self.requests if m == "GET" and p.startswith(prefix))

    def _answer(self, handler, body: bool):
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        api = f"/api/models/{self.repo}"
        resolve = f"/{self.repo}/resolve/"
        if path == api or path.startswith(api + "/revision/"):
            listing = {"id": self.repo, "modelId": self.repo, "sha": SHA, "private": False, "disabled": False,
                       "gated": False, "tags": [], "downloads": 0, "likes": 0,
                       "siblings": [{"rfilename": name} for name in sorted(self.files)]}
            return self._send(handler, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(resolve):
            name = path[len(resolve):].split("/", 1)[1]
            if name in self.files:
                data = self.files[name]
                headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                           "Content-Type": "application/octet-stream"}
                return self._send(handler, 200, data, headers, body)
            return self._send(handler, 404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": SHA}, body)
        return self._send(handler, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)

    @staticmethod
    def _send(handler, status, data, headers, body):
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


@pytest.fixture
def stalled():
    server = StalledServer()
    yield server
    server.stop()


def _env(tmp_path, endpoint, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
           and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", FEWSTEP_HUB_TIMEOUT=str(TIMEOUT),
               **extra)
    return env


def _run(args, env, cwd, limit=240):
    started = time.monotonic()
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=limit)
    return done, time.monotonic() - started


def _cached_files(tmp_path):
    root = tmp_path / "hf"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "snapshots" in p.parts)


# --- (a) a stalled endpoint -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["-m", "fewstep", "generate", "a cat", "--model", "org/repo", "-o", "out.png"],
    ["-m", "fewstep", "info", "org/repo"],
], ids=["generate", "info"])
def test_a_stalled_endpoint_fails_within_the_timeout_naming_the_variable(command, stalled, tmp_path):
    done, _ = _run(command, _env(tmp_path, stalled.url), tmp_path, limit=90)  # unbounded, it hung here
    ended = time.monotonic()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fewstep: error: 'org/repo': the hub at "), done.stderr
    assert f"did not answer within {TIMEOUT} s; set FEWSTEP_HUB_TIMEOUT" in lines[0]
    # one request, not retried, and the failure came within the bound of it
    assert len(stalled.accepted) == 1
    assert ended - stalled.accepted[0] < TIMEOUT + SLACK
    assert not (tmp_path / "out.png").exists() and _cached_files(tmp_path) == []


def test_a_stalled_endpoint_bounds_a_hub_lora_and_single_files(stalled, tmp_path):
    """The LoRA, IP-Adapter and single-file config paths go through the same bounded call."""
    code = ("import sys, time\n"
            "from fewstep.pipelines import hub\n"
            "from fewstep.pipelines.lora import _from_hub\n"
            "for call in (lambda: _from_hub('org/lora', None, {}), lambda: hub.file('org/ip', 'ip.safetensors'),\n"
            "             lambda: hub.snapshot_matching('org/configs', ['*.json'])):\n"
            "    t = time.monotonic()\n"
            "    try:\n"
            "        call()\n"
            "    except ValueError as err:\n"
            "        print(round(time.monotonic() - t, 1), str(err).splitlines()[0])\n")
    done, _ = _run(["-c", code], _env(tmp_path, stalled.url), tmp_path, limit=90)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and len(stalled.accepted) == 3
    for line, repo in zip(lines, ("org/lora", "org/ip", "org/configs")):
        seconds, message = line.split(" ", 1)
        assert float(seconds) < TIMEOUT + SLACK
        assert message.startswith(f"'{repo}': the hub at ") and "FEWSTEP_HUB_TIMEOUT" in message


def test_the_timeout_variable_is_checked(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("FEWSTEP_HUB_TIMEOUT", raising=False)
    assert hub.metadata_timeout() == float(constants.HF_HUB_ETAG_TIMEOUT)
    monkeypatch.setenv("FEWSTEP_HUB_TIMEOUT", "2.5")
    assert hub.metadata_timeout() == 2.5
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("FEWSTEP_HUB_TIMEOUT", bad)
        with pytest.raises(hub.HubError, match=rf"^FEWSTEP_HUB_TIMEOUT='{bad}' is not a number of seconds"):
            hub.metadata_timeout()


# --- which files a pipeline fetches ---------------------------------------------------------------------
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.35.2",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None]}
LOADED = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
          "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
          "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
          "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
FP16 = {"text_encoder/model.safetensors": "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors": "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors": "vae/diffusion_pytorch_model.fp16.safetensors"}
DECOYS = ["v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "README.md", "unet/diffusion_pytorch_model.bin",
          "unet/diffusion_pytorch_model.fp16.bin", "unet/model.onnx", "text_encoder/pytorch_model.bin",
          "text_encoder/flax_model.msgpack", "vae/diffusion_pytorch_model.non_ema.safetensors",
          "safety_checker/config.json", "safety_checker/model.safetensors",
          "feature_extractor/preprocessor_config.json",
          "vae_decoder/model.onnx", "unet/extra/notes.txt"]


def _listing():
    return LOADED + list(FP16.values()) + DECOYS


def test_a_pipeline_fetches_its_components_files_and_no_decoy():
    assert hub.pipeline_files(_listing(), SD_INDEX) == LOADED
    fp16 = [FP16.get(name, name) for name in LOADED]
    assert sorted(hub.pipeline_files(_listing(), SD_INDEX, variant="fp16")) == sorted(fp16)
    # a component passed in is not fetched
    assert [n for n in hub.pipeline_files(_listing(), SD_INDEX, skip=["unet"]) if n.startswith("unet/")] == []


def test_sharded_and_partial_variants_follow_diffusers():
    names = LOADED + ["text_encoder/model.fp16-00001-of-00002.safetensors",
                      "text_encoder/model.fp16-00002-of-00002.safetensors",
                      "text_encoder/model.safetensors.index.fp16.json"]
    chosen = hub.pipeline_files(names, SD_INDEX, variant="fp16")
    # the variant where a component has it, the plain weights where it has not (diffusers' mixture)
    assert [n for n in chosen if n.startswith("text_encoder/")] == [
        "text_encoder/config.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.fp16.json"]
    assert "unet/diffusion_pytorch_model.safetensors" in chosen


@pytest.mark.parametrize("names, variant, message", [
    ([n for n in LOADED if n != "unet/diffusion_pytorch_model.safetensors"] + ["unet/diffusion_pytorch_model.bin"],
     None, r"^'org/repo': unet has no safetensors weights \(fewstep never loads pickled \.bin files\)"),
    (LOADED, "bf16", r"^'org/repo' has no weights of variant 'bf16'"),
], ids=["only-pickles", "no-such-variant"])
def test_a_pipeline_without_loadable_weights_is_refused_before_fetching(names, variant, message):
    with pytest.raises(hub.HubError, match=message):
        hub.pipeline_files(names, SD_INDEX, variant=variant, where="'org/repo'")


def test_one_model_of_a_pipeline_fetches_its_config_and_weights():
    assert hub.model_files(_listing(), "unet") == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert hub.model_files(_listing(), "unet", "fp16") == ["unet/config.json",
                                                           "unet/diffusion_pytorch_model.fp16.safetensors"]
    controlnet = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                  "diffusion_pytorch_model.bin", "README.md", "images/canny.png"]  # a model repository: its root
    assert hub.model_files(controlnet) == ["config.json", "diffusion_pytorch_model.safetensors"]
    for folder in ("safety", "tokenizer", "feature_extractor"):  # no such folder, or no model in it
        with pytest.raises(hub.HubError, match=rf"^'org/repo' has no model in '{folder}' \(a config.json and "):
            hub.model_files(_listing(), folder, where="'org/repo'")


def test_other_repositories_fetch_safetensors_and_small_files():
    names = ["pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin", "README.md",
             "models/image_encoder/config.json",
             "models/image_encoder/model.safetensors", "models/image_encoder/pytorch_model.bin", "model.onnx"]
    assert hub.matching_files(names) == ["README.md", "models/image_encoder/config.json",
                                         "models/image_encoder/model.safetensors", "pytorch_lora_weights.safetensors"]
    assert hub.matching_files(names, ["models/image_encoder/*"]) == ["models/image_encoder/config.json",
                                                                     "models/image_encoder/model.safetensors"]


# --- (b) a fake repository served on 127.0.0.1 ----------------------------------------------------------
def _fake_files():
    files = {name: f"content of {name}".encode() for name in _listing()}
    files["model_index.json"] = json.dumps(SD_INDEX).encode()
    return files


@pytest.fixture
def fake_hub():
    server = FakeHub("org/repo", _fake_files())
    yield server
    server.stop()


RESOLVE = ("import sys\nfrom fewstep.pipelines.loading import resolve_folder\n"
           "print(resolve_folder('org/repo', variant=sys.argv[1] if len(sys.argv) > 1 else None,\n"
           "                     subfolder=sys.argv[2] if len(sys.argv) > 2 else None))\n")


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_a_pipeline_id_downloads_only_what_the_pipeline_loads(variant, fake_hub, tmp_path):
    env = _env(tmp_path, fake_hub.url)
    done, _ = _run(["-c", RESOLVE] + ([variant] if variant else []), env, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = LOADED if variant is None else sorted(FP16.get(n, n) for n in LOADED)
    assert fake_hub.fetched() == sorted(expected)
    folder = done.stdout.strip().splitlines()[-1]
    assert os.path.basename(folder) == SHA
    on_disk = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    assert on_disk == sorted(expected)
    # the listing was asked once; nothing else but the chosen files' metadata and content
    assert [p for m, p in fake_hub.requests if p.startswith("/api/")] in (["/api/models/org/repo"],
                                                                          ["/api/models/org/repo/revision/main"])
    # offline afterwards, the same snapshot serves with no request
    before = len(fake_hub.requests)
    again, _ = _run(["-c", RESOLVE] + ([variant] if variant else []), dict(env, HF_HUB_OFFLINE="1"), tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == folder and len(fake_hub.requests) == before


def test_a_model_in_a_subfolder_downloads_that_model_only(fake_hub, tmp_path):
    done, _ = _run(["-c", RESOLVE, "fp16", "unet"], _env(tmp_path, fake_hub.url), tmp_path)
    assert done.returncode == 0, done.stderr
    assert fake_hub.fetched() == ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert os.path.basename(done.stdout.strip().splitlines()[-1]) == SHA


def test_a_repository_without_the_variant_is_refused_before_any_weight_is_fetched(fake_hub, tmp_path):
    done, _ = _run(["-c", RESOLVE, "bf16"], _env(tmp_path, fake_hub.url), tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("fewstep.pipelines.hub.HubError: 'org/repo' has no weights "
                                                           "of variant 'bf16'")
    assert fake_hub.fetched() == ["model_index.json"]


@pytest.mark.torch
def test_generate_runs_on_a_pipeline_fetched_from_a_fake_hub(tmp_path):
    """End to end: the files chosen are enough for `fewstep generate` to draw."""
    from fewstep.testing import tiny_pipeline

    source = tiny_pipeline("sd15")
    files = {os.path.relpath(os.path.join(r, f), source).replace(os.sep, "/"): open(os.path.join(r, f), "rb").read()
             for r, _, fs in os.walk(source) for f in fs if not f.startswith(".")}
    decoys = {"tiny-sd15.safetensors": b"x", "unet/model.onnx": b"x",
              "unet/diffusion_pytorch_model.fp16.safetensors": b"x",
              "unet/diffusion_pytorch_model.bin": b"x"}
    server = FakeHub("org/repo", {**files, **decoys})
    try:
        done, _ = _run(["-m", "fewstep", "generate", "a cat", "--model", "org/repo", "--steps", "1", "-o", "out.png"],
                       _env(tmp_path, server.url), tmp_path, limit=400)
        assert done.returncode == 0, done.stderr
        assert server.fetched() == sorted(files)
        assert (tmp_path / "out.png").stat().st_size > 0
    finally:
        server.stop()


LORA_FILES = {"pytorch_lora_weights.safetensors": b"lora", "pytorch_lora_weights.bin": b"pickle", "README.md": b"notes",
              "other/lora.safetensors": b"other", "example.png": b"png"}
FROM_HUB = ("import sys\nfrom fewstep.pipelines.lora import _from_hub\n"
            "try:\n    print(_from_hub('org/repo', sys.argv[1] or None, {'subfolder': sys.argv[2] or None}))\n"
            "except ValueError as err:\n    print('error:', str(err).splitlines()[0])\n")


@pytest.mark.parametrize("weight_name, subfolder, fetched, result", [
    ("", "", ["pytorch_lora_weights.safetensors"], "pytorch_lora_weights.safetensors"),
    ("lora.safetensors", "other", ["other/lora.safetensors"], "other/lora.safetensors"),
    ("", "other", ["other/lora.safetensors"], "other/lora.safetensors"),  # its only .safetensors file
    ("missing.safetensors", "", [], "error: 'org/repo' has no LoRA file 'missing.safetensors'; pass weight_name="),
], ids=["default-name", "named", "only-file", "missing"])
def test_a_hub_lora_fetches_that_file_only(weight_name, subfolder, fetched, result, tmp_path):
    server = FakeHub("org/repo", LORA_FILES)
    try:
        done, _ = _run(["-c", FROM_HUB, weight_name, subfolder], _env(tmp_path, server.url), tmp_path)
        assert done.returncode == 0, done.stderr
        assert server.fetched() == fetched
        line = done.stdout.strip().splitlines()[-1]
        assert line.startswith(result) if result.startswith("error") else line.endswith(f"{SHA}/{result}")
        assert sorted(p.split(f"{SHA}/", 1)[1] for p in _cached_files(tmp_path)) == fetched
    finally:
        server.stop()
