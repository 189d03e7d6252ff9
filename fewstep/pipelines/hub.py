"""Every huggingface_hub call fewstep makes: bounded in time, and fetching only the files that are used.

huggingface_hub's `snapshot_download` asks the hub for the repository's listing with no timeout at all, so a
server that accepts and never answers hangs it forever; and a file download retries a stalled request five
times. Here the listing is asked first, once, with a timeout (FEWSTEP_HUB_TIMEOUT seconds, else
huggingface_hub's HF_HUB_ETAG_TIMEOUT, 10 s): a stalled endpoint fails within that bound, in one line naming
the variable. Only once the hub has answered are the chosen files fetched, one `hf_hub_download` each (with
the same timeout for each file's metadata; huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT bounds each read).

Which files: `pipeline_files` picks, as diffusers' `DiffusionPipeline.download` does, model_index.json, the
config and safetensors weights (of the chosen variant, else the plain ones) of each component fewstep loads,
and the tokenizer and scheduler folders; never pickles (.bin, .ckpt), ONNX or Flax files, single-file copies
at the root, or components fewstep never loads (safety checker, feature extractor). A model repository (a
ControlNet's) gets its config and weights (`model_files`), any other (a LoRA, an IP-Adapter) its safetensors,
JSON and text files, or the files a caller names.

Offline (HF_HUB_OFFLINE, or local_files_only=True) nothing is asked: the cached snapshot is used. When the hub
cannot be reached, a cached snapshot is used too, as huggingface_hub does. huggingface_hub is imported in the
functions that call it, never at import time.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
from typing import Callable, Iterable, List, Optional, Sequence

logger = logging.getLogger("fewstep")

TIMEOUT_VARIABLE = "FEWSTEP_HUB_TIMEOUT"
# the options fewstep's loaders pass on to huggingface_hub (as diffusers' loaders take them)
OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "proxies")
# components fewstep loads from a pipeline folder (conditioning.py, controlnet.py, t2i_adapter.py, animatediff.py);
# model_index.json may list others (safety_checker, feature_extractor, image_encoder) that are never read
LOADED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
                     "controlnet", "adapter", "motion_adapter")
_FOLDER_COMPONENTS = ("tokenizer", "tokenizer_2", "scheduler")  # every file of these folders is read
# files fewstep never opens: pickles, ONNX / TensorFlow / Flax weights
_NEVER = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".onnx", ".onnx_data", ".pb", ".msgpack", ".h5")

_SHARD = r"-\d{5}-of-\d{5}"
_PREFIX = r"(?:diffusion_pytorch_model|model)"  # diffusers' and transformers' weight file names


class HubError(ValueError):
    """What fewstep itself finds wrong with a repository (a file it needs is not there); said in one line."""


class HubTimeout(HubError):
    """The hub did not answer within the bound; the message names the variable that sets it."""


# --- the bound ------------------------------------------------------------------------------------------
def metadata_timeout() -> float:
    """Seconds to wait for the hub's answer to a metadata request: FEWSTEP_HUB_TIMEOUT, else huggingface_hub's
    HF_HUB_ETAG_TIMEOUT (10 s unless set)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        from huggingface_hub import constants

        return float(constants.HF_HUB_ETAG_TIMEOUT)
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise HubError(f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds; set it to e.g. 10, or unset it.")
    return seconds


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _class_names(err: BaseException) -> set:
    # urllib3's own classes are left out: its NewConnectionError (a refused connection) subclasses
    # ConnectTimeoutError; requests above it says which it was
    return {cls.__name__ for e in _chain(err) for cls in type(e).__mro__
            if not type(e).__module__.startswith("urllib3")}


def timed_out(err: BaseException) -> bool:
    """A timeout of requests (huggingface_hub 0.x), httpx (1.x) or the socket, wherever in the cause chain."""
    return any("Timeout" in name for name in _class_names(err)) or any(
        isinstance(e, TimeoutError) and not type(e).__module__.startswith("urllib3") for e in _chain(err))


def unreachable(err: BaseException) -> bool:
    """The hub could not be reached (as opposed to answering no): a timeout, a refused or broken connection."""
    names = _class_names(err)
    return timed_out(err) or bool(names & {"ConnectionError", "ConnectError", "TransportError", "NetworkError"})


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _timeout_error(repo_id: str, seconds: float, err: BaseException) -> HubTimeout:
    return HubTimeout(f"{repo_id!r}: the hub at {_endpoint()} did not answer within {seconds:g} s; set "
                      f"{TIMEOUT_VARIABLE} (seconds) to wait longer, HF_ENDPOINT to use a mirror, or HF_HUB_OFFLINE=1 "
                      f"to use only the local cache.")


def offline(options: Optional[dict] = None) -> bool:
    """Whether nothing may be asked of the hub: local_files_only=True, or huggingface_hub's offline mode."""
    from huggingface_hub import constants

    return bool((options or {}).get("local_files_only")) or bool(constants.HF_HUB_OFFLINE)


# --- which files ----------------------------------------------------------------------------------------
def _never_read(name: str) -> bool:
    return name.lower().endswith(_NEVER)


def weight_files(names: Iterable[str], variant: Optional[str] = None) -> List[str]:
    """The safetensors weight files (and their shard index) of one component folder (`names` are the file
    names in it) that diffusers loads for `variant`: that variant's files where the folder has them
    (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors` and the legacy
    `model-00001-of-00002.fp16.safetensors`), else the plain ones."""
    names = list(names)
    if variant:
        v = re.escape(variant)
        patterns = (rf"{_PREFIX}\.{v}(?:{_SHARD})?\.safetensors", rf"{_PREFIX}{_SHARD}\.{v}\.safetensors",
                    rf"{_PREFIX}\.safetensors\.index\.{v}\.json", rf"{_PREFIX}\.safetensors\.{v}\.index\.json")
        chosen = [n for n in names if any(re.fullmatch(p, n) for p in patterns)]
        if any(n.endswith(".safetensors") for n in chosen):
            return sorted(chosen)
    plain = (rf"{_PREFIX}(?:{_SHARD})?\.safetensors", rf"{_PREFIX}\.safetensors\.index\.json")
    return sorted(n for n in names if any(re.fullmatch(p, n) for p in plain))


def pipeline_files(repo_files: Iterable[str], index: dict, variant: Optional[str] = None,
                   skip: Iterable[str] = (), where: str = "the repository") -> List[str]:
    """The files of a pipeline repository (`repo_files`, its model_index.json read as `index`) that fewstep
    loads for `variant`, leaving out the components in `skip` (passed in by the caller). A ValueError, before
    anything is fetched, when a component that is loaded has no safetensors weights or no component has
    `variant`'s."""
    by_folder = {}
    for name in repo_files:
        folder, _, rest = name.partition("/")
        if rest and "/" not in rest:
            by_folder.setdefault(folder, []).append(rest)
    chosen, without, has_variant = ["model_index.json"], [], False
    for component, spec in index.items():
        if component not in LOADED_COMPONENTS or component in set(skip) or component not in by_folder:
            continue
        if not (isinstance(spec, (list, tuple)) and spec and spec[0] is not None):
            continue
        inside = by_folder[component]
        if component in _FOLDER_COMPONENTS:
            chosen += [f"{component}/{n}" for n in inside if not _never_read(n)]
            continue
        weights = weight_files(inside, variant)
        if not any(n.endswith(".safetensors") for n in weights):
            without.append(component)
            continue
        has_variant = has_variant or bool(variant) and weights != weight_files(inside)
        chosen += [f"{component}/{n}" for n in ["config.json"] + weights if n in inside]
    if without:
        which = f" of variant {variant!r} or plain" if variant else ""
        raise HubError(f"{where}: {', '.join(without)} has no safetensors weights{which} (fewstep never loads "
                         f"pickled .bin files); use a repository with .safetensors weights, or pass the component.")
    if variant and not has_variant:
        raise HubError(f"{where} has no weights of variant {variant!r} (e.g. diffusion_pytorch_model.{variant}"
                         f".safetensors); pass variant=None, or one the repository has.")
    return sorted(chosen)


def matching_files(repo_files: Iterable[str], patterns: Optional[Sequence[str]] = None) -> List[str]:
    """The files of a repository matching `patterns` (huggingface_hub's allow_patterns: fnmatch, `*` crossing
    folders), or every file with none; pickles, ONNX and Flax files never."""
    return sorted(n for n in repo_files if not _never_read(n)
                  and (patterns is None or any(fnmatch.fnmatch(n, p) for p in patterns)))


# --- fetching -------------------------------------------------------------------------------------------
Chooser = Callable[[List[str], Callable[[str], str]], List[str]]


def fetch(repo_id: str, choose: Chooser, options: Optional[dict] = None) -> str:
    """The local snapshot folder of `repo_id` holding the files `choose(names, read)` picks from the
    repository's file names (`read(name)` gives a local path of one file, fetched if need be, e.g. to read
    model_index.json first). `options` are huggingface_hub's (OPTIONS). Offline, the cached snapshot."""
    from huggingface_hub import HfApi

    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"Unexpected hub options {unknown}; the hub options are {list(OPTIONS)}.")
    if offline(options):
        return _cached(repo_id, choose, options)
    seconds = metadata_timeout()
    try:
        info = HfApi().repo_info(repo_id, revision=options.get("revision"), token=options.get("token"),
                                 timeout=seconds)
    except Exception as err:
        if not unreachable(err):
            raise
        try:  # the hub cannot be reached: a snapshot already in the cache serves, as in huggingface_hub
            folder = _cached(repo_id, choose, options)
        except Exception:
            if timed_out(err):
                raise _timeout_error(repo_id, seconds, err) from err
            raise err
        logger.info("The hub could not be reached (%s); using the cached snapshot of %s.", type(err).__name__, repo_id)
        return folder
    names = [s.rfilename for s in (info.siblings or [])]
    fetched, folder = {}, []

    def read(name: str) -> str:
        if name not in fetched:
            # the first file is asked for by the caller's revision, so that huggingface_hub records the branch's
            # commit in its cache (an offline run finds the snapshot); the rest by that commit, as
            # snapshot_download does
            revision = options.get("revision") if not fetched else os.path.basename(folder[0])
            fetched[name] = _download(repo_id, name, revision, seconds, options)
            if not folder:  # huggingface_hub's cache layout: .../snapshots/<commit>/<file in the repository>
                folder.append(fetched[name][: -len(name) - 1])
        return fetched[name]

    chosen = choose(names, read)
    if not chosen:
        raise HubError(f"{repo_id!r} has no file fewstep reads here (it lists {len(names)} files).")
    for name in chosen:
        read(name)
    return folder[0]


def _download(repo_id: str, name: str, revision: Optional[str], seconds: float, options: dict) -> str:
    from huggingface_hub import hf_hub_download

    passed = {k: options[k] for k in ("cache_dir", "token", "force_download", "proxies") if k in options}
    try:
        return hf_hub_download(repo_id, name, revision=revision, etag_timeout=seconds, **passed)
    except Exception as err:
        if timed_out(err):
            raise _timeout_error(repo_id, seconds, err) from err
        raise


def _cached(repo_id: str, choose: Chooser, options: dict) -> str:
    """The cached snapshot (no network); `choose` runs on its files so that a caller's checks apply offline."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo_id, revision=options.get("revision"), cache_dir=options.get("cache_dir"),
                               local_files_only=True)
    names = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
             for root, _, files in os.walk(folder) for f in files]
    try:
        choose(names, lambda name: os.path.join(folder, name))
    except HubError as err:
        raise HubError(f"{err} (Offline: only the cached snapshot {folder} was searched.)") from err
    return folder


# --- what fewstep's loaders ask for ---------------------------------------------------------------------
def model_files(repo_files: Iterable[str], subfolder: str = "", variant: Optional[str] = None,
                where: str = "the repository") -> List[str]:
    """The config and safetensors weights (of `variant`, else plain) of the one model in `subfolder` ("": the
    repository's root, as in a ControlNet or MotionAdapter repository)."""
    prefix = f"{subfolder}/" if subfolder else ""
    inside = [n[len(prefix):] for n in repo_files if n.startswith(prefix) and "/" not in n[len(prefix):]]
    weights = weight_files(inside, variant)
    if "config.json" not in inside or not any(n.endswith(".safetensors") for n in weights):
        raise HubError(f"{where} has no model in {subfolder or 'its root'!r} (a config.json and .safetensors "
                       f"weights{' of variant ' + repr(variant) if variant else ''}); pass the subfolder that holds "
                       f"one.")
    return [prefix + n for n in ["config.json"] + weights]


def snapshot(repo_id: str, variant: Optional[str] = None, skip: Iterable[str] = (),
             options: Optional[dict] = None, subfolder: Optional[str] = None) -> str:
    """A pipeline repository's files that fewstep loads (`pipeline_files`); the one model in `subfolder`, or
    at the root of a model repository (config.json, no model_index.json), with `model_files`; or for any other
    repository (a LoRA, an IP-Adapter) its safetensors, JSON and text files."""

    def choose(names, read):
        if subfolder or ("config.json" in names and "model_index.json" not in names):
            return model_files(names, (subfolder or "").strip("/"), variant, where=repr(repo_id))
        if "model_index.json" not in names:
            return matching_files(names, ["*.safetensors", "*.json", "*.txt"])
        with open(read("model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        if not isinstance(index, dict):
            raise HubError(f"{repo_id!r}'s model_index.json is not a JSON object; it is not a diffusers pipeline.")
        return pipeline_files(names, index, variant, skip, where=repr(repo_id))

    return fetch(repo_id, choose, options)


def snapshot_matching(repo_id: str, patterns: Sequence[str], options: Optional[dict] = None) -> str:
    """The snapshot folder holding the repository's files that match `patterns` (`matching_files`)."""
    return fetch(repo_id, lambda names, read: matching_files(names, patterns), options)


def file(repo_id: str, filename: str, subfolder: Optional[str] = None, options: Optional[dict] = None) -> str:
    """The local path of one file of a repository (`subfolder/filename`)."""
    name = f"{subfolder.strip('/')}/{filename}" if subfolder else filename

    def choose(names, read):
        if name not in names:
            raise HubError(f"{repo_id!r} has no file {name!r}; name one it has (weight_name=, subfolder=).")
        return [name]

    return os.path.join(fetch(repo_id, choose, options), name)
