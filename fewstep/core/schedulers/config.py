"""The configuration machinery of the schedulers: what diffusers' `ConfigMixin` gives its schedulers.

A scheduler records every constructor argument in a read-only `config` (`records_config`), can be
rebuilt from a config dict, a folder or a `scheduler_config.json` (`from_config`, `from_pretrained`),
writes a `scheduler_config.json` that diffusers and mindone read (`save_config`), and, as diffusers'
schedulers do, answers a config key read as an attribute (`scheduler.num_train_timesteps`) with the
config value and a FutureWarning.

NumPy and the standard library only: the classes derive from no library's mixins. Where diffusers or
mindone needs its own `SchedulerMixin` (`from_pretrained(..., scheduler=)`, `save_pretrained`),
`fewstep/backends/scheduler_interop.py` builds a subclass with them on request.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from fewstep.core.files import write_text

logger = logging.getLogger("fewstep")

SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class SchedulerConfig(dict):
    """A frozen dict with attribute access (`config.num_train_timesteps`).

    A real `dict` subclass because diffusers' `from_config` treats anything else as a path; frozen
    because changing it would not recompute the tables built from it. To change a value, build a new
    scheduler: `TCDScheduler.from_config(scheduler.config, prediction_type="v_prediction")`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"The scheduler config has no key {name!r}.") from None

    def _frozen(self, *args, **kwargs):
        raise TypeError(
            "A scheduler config is read-only; build a new scheduler with the change instead, e.g. "
            "TCDScheduler.from_config(scheduler.config, prediction_type='v_prediction')."
        )

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _frozen
    update = pop = popitem = setdefault = clear = _frozen

    def __reduce__(self):
        # dict's default pickling re-inserts items with __setitem__, which is frozen.
        return (SchedulerConfig, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return SchedulerConfig({k: copy.deepcopy(v, memo) for k, v in self.items()})


def _json_ready(value):
    """Config values as JSON can hold them (trained_betas may be a NumPy array)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def records_config(init):
    """Decorator for `__init__`: store every constructor argument in `self._internal_dict`, plus
    `_use_default_values` naming the arguments that were not given. diffusers reads that list when a
    config moves to another scheduler class, so the target class keeps its own defaults for them."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        given = [name for name in bound.arguments if name != "self"]
        bound.apply_defaults()
        init(self, *args, **kwargs)
        values = {name: value for name, value in bound.arguments.items() if name != "self"}
        defaults = sorted(set(values) - set(given))
        config = {"_class_name": type(self).__name__, **values}
        if defaults:
            config["_use_default_values"] = defaults
        object.__setattr__(self, "_internal_dict", SchedulerConfig(config))

    return wrapper


def read_config_file(path: Union[str, os.PathLike], subfolder: Optional[str] = None) -> Dict[str, Any]:
    """A scheduler config dict from a `scheduler_config.json` path or a folder holding one.

    A pipeline folder (model_index.json + scheduler/) needs `subfolder="scheduler"`, as in diffusers."""
    path = os.fspath(path)
    if subfolder:
        path = os.path.join(path, subfolder)
    if os.path.isdir(path):
        candidate = os.path.join(path, SCHEDULER_CONFIG_NAME)
        if not os.path.isfile(candidate):
            nested = os.path.join(path, "scheduler", SCHEDULER_CONFIG_NAME)
            hint = (
                " It looks like a pipeline folder: pass subfolder='scheduler'." if os.path.isfile(nested) else ""
            )
            raise FileNotFoundError(f"No {SCHEDULER_CONFIG_NAME} in the folder {path!r}.{hint}")
        path = candidate
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} is neither a folder nor a {SCHEDULER_CONFIG_NAME} file. fewstep reads local files only; "
            f"download a hub repository first, e.g. with huggingface_hub.snapshot_download(repo_id)."
        )
    try:
        with open(path, "r", encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path!r} is not a valid JSON scheduler config: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} holds a JSON {type(config).__name__}, not a scheduler config object.")
    return config


class Configurable:
    """Config round trip for a class whose `__init__` is wrapped with `records_config`."""

    config_name = SCHEDULER_CONFIG_NAME
    ignore_for_config: list = []
    _deprecated_kwargs: list = []   # constructor keywords accepted only to warn (diffusers' convention)
    has_compatibles = True
    _compatibles: list = []         # other scheduler class names that can load this config

    @property
    def config(self) -> SchedulerConfig:
        """The constructor arguments (and keys kept from the config it was built from), read-only."""
        return self._internal_dict

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails. As diffusers' ConfigMixin: a config key read as an
        # attribute still works, with a FutureWarning pointing to `scheduler.config.<name>`.
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal:
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                f"'scheduler.config.{name}'.",
                FutureWarning,
                stacklevel=2,
            )
            return internal[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    @classmethod
    def from_config(
        cls,
        config: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        return_unused_kwargs: bool = False,
        subfolder: Optional[str] = None,
        **kwargs,
    ):
        """A scheduler from a config.

        Args:
            config (`dict`, `str` or `os.PathLike`, *optional*):
                A config dict (e.g. another scheduler's `.config`, diffusers' included), a folder holding
                `scheduler_config.json` (`subfolder="scheduler"` for a pipeline folder), or that file's path.
            return_unused_kwargs (`bool`, *optional*, defaults to False):
                Also return the keyword arguments and config keys the constructor did not take.
            subfolder (`str`, *optional*):
                The folder below `config` that holds the scheduler config.
            kwargs (remaining keyword arguments, *optional*):
                Values that override the config's.

        Returns:
            The scheduler, and with `return_unused_kwargs` also a dict of what it did not use.

        Keys the constructor does not take (an SD pipeline's `skip_prk_steps`, `interpolation_type`, ...)
        are ignored but kept in `.config`, as diffusers keeps them, so they survive a round trip; keys a
        diffusers config lists in `_use_default_values` are dropped so this class's defaults apply."""
        if config is None:
            config = kwargs.pop("pretrained_model_name_or_path", None)
        if isinstance(config, Mapping):
            source = dict(config)
        elif isinstance(config, (str, os.PathLike)):
            source = read_config_file(config, subfolder)
        else:
            raise ValueError(
                f"from_config takes a config dict, a folder or a scheduler_config.json path, not a "
                f"{type(config).__name__}."
            )
        dropped = set(source.get("_use_default_values", []) or [])
        source = {k: v for k, v in source.items() if k not in dropped and k != "_use_default_values"}

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        init = {}
        for name in params:
            if name in kwargs:
                init[name] = kwargs.pop(name)
            elif name in source:
                init[name] = source[name]
        hidden = {k: v for k, v in source.items() if k not in init}
        ignored = sorted(k for k in hidden if not k.startswith("_"))
        if ignored:
            logger.info(f"{cls.__name__}.from_config ignores config keys it does not use: {ignored}")
        if kwargs and not return_unused_kwargs:
            logger.warning(f"{cls.__name__}.from_config ignores unknown keyword arguments: {sorted(kwargs)}")

        scheduler = cls(**init)
        merged = {**scheduler.config, **hidden, "_class_name": cls.__name__}
        object.__setattr__(scheduler, "_internal_dict", SchedulerConfig(merged))
        if return_unused_kwargs:
            return scheduler, {**kwargs, **hidden}
        return scheduler

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike, None] = None,
        subfolder: Optional[str] = None,
        return_unused_kwargs: bool = False,
        **kwargs,
    ):
        """A scheduler from a local folder, as diffusers' `SchedulerMixin.from_pretrained`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`, *optional*):
                A folder holding `scheduler_config.json`, or a pipeline folder with `subfolder="scheduler"`.
            subfolder (`str`, *optional*):
                The folder below it that holds the scheduler config.
            return_unused_kwargs (`bool`, *optional*, defaults to False):
                Also return the keyword arguments the constructor did not take.
            kwargs (remaining keyword arguments, *optional*):
                Values that override the config's. Hub download options (`cache_dir`, `revision`, ...) are
                not used: fewstep reads local folders.

        Returns:
            The scheduler, as `from_config` returns it."""
        for option in ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
                       "use_auth_token", "resume_download", "user_agent"):
            kwargs.pop(option, None)
        return cls.from_config(read_config_file(pretrained_model_name_or_path, subfolder),
                               return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_json_string(self) -> str:
        config = {k: _json_ready(v) for k, v in self.config.items() if k != "_use_default_values"}
        config["_class_name"] = type(self).__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: Union[str, os.PathLike]) -> None:
        # whole or not at all, and a link at the path is replaced rather than written through
        write_text(os.fspath(json_file_path), self.to_json_string())

    def save_config(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs) -> str:
        """Write `scheduler_config.json` into a folder.

        Args:
            save_directory (`str` or `os.PathLike`):
                The folder (created if missing). diffusers' and mindone's `from_pretrained(folder)` read it.
            push_to_hub (`bool`, *optional*, defaults to False):
                Not supported (no hub access); `True` is an error.
            kwargs (remaining keyword arguments, *optional*):
                Accepted for diffusers' signature; unused.

        Returns:
            `str`: the path of the file written."""
        if push_to_hub:
            raise ValueError("fewstep does not push to a hub; save locally and upload with huggingface_hub.")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_config needs a folder, but {save_directory!r} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        self.to_json_file(path)
        return path

    save_pretrained = save_config

    def register_to_config(self, **kwargs) -> None:
        """Merge keys into the config (diffusers pipelines use this to patch legacy configs). Tables built
        at construction (betas, alphas_cumprod) are not recomputed; step-time options are."""
        merged = {**self.config, **kwargs}
        object.__setattr__(self, "_internal_dict", SchedulerConfig(merged))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
