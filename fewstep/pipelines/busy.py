"""One call at a time per pipeline: a second thread gets a clear error instead of mixed state.

A call sets the scheduler's timesteps and steps it, and may re-fuse LoRAs into the UNet's weights
(`cross_attention_kwargs={"scale": ...}`); `load_lora_weights`, `set_adapters`, `fuse_lora`, the
IP-Adapter methods and `pipe.to` change those weights. Two threads doing either on one pipeline at once
would give images that are neither call's (the issue that found it saw different images from four
threads, and no error), so each of them holds the pipeline while it runs, and another thread that
finds it held gets a RuntimeError at once: never a wait, which could hide a deadlock or a slow queue
behind what looks like a hang.

What is held is the pipeline's UNet and scheduler objects, not the pipeline object: pipelines made with
`from_pipe` or from `pipe.components` share them (and their weights), so they count as one.

In the thread that holds it, the weight-changing methods may run again (a `callback_on_step_end` that
calls `set_adapters` between steps, as it could in diffusers); a second `__call__` from inside a call
is refused, as it would reset the running call's scheduler.
"""

from __future__ import annotations

import functools
import threading
import weakref
from contextlib import contextmanager
from typing import Dict, List

_guards: "weakref.WeakKeyDictionary[object, _Guard]" = weakref.WeakKeyDictionary()
_by_id: Dict[int, "_Guard"] = {}  # objects that cannot be weakly referenced (kept while the process lives)
_registry = threading.Lock()


class _Guard:
    def __init__(self):
        self.lock = threading.Lock()
        self.owner = None   # the holding thread's ident (only the holder sets or clears it)
        self.what = ""      # what the holder is running, for the other thread's message
        self.depth = 0


def _guard(obj) -> _Guard:
    with _registry:
        try:
            guard = _guards.get(obj)
            if guard is None:
                guard = _guards[obj] = _Guard()
        except TypeError:  # unhashable or not weak-referenceable
            guard = _by_id.setdefault(id(obj), _Guard())
        return guard


def _held_objects(pipe) -> List[object]:
    found = []
    for name in ("unet", "scheduler"):
        obj = pipe.__dict__.get(name)
        if obj is not None and all(obj is not o for o in found):
            found.append(obj)
    return found or [pipe]


@contextmanager
def hold(pipe, what: str, reentrant: bool = True):
    """Hold `pipe` (its UNet and scheduler) while the block runs, or raise RuntimeError at once when another
    thread holds it. `what` says what is running, for the other thread's message ("a call", "set_adapters()");
    `reentrant=False` also refuses the holding thread."""
    me = threading.get_ident()
    taken: List[_Guard] = []
    try:
        for obj in _held_objects(pipe):
            guard = _guard(obj)
            if guard.owner == me:  # only this thread can have set it to its own ident
                if not reentrant:
                    raise RuntimeError(f"This thread is already running {guard.what} on this pipeline (called again "
                                       f"from a callback?); a pipeline runs one call at a time: call it after the "
                                       f"running call returns.")
                guard.depth += 1
            elif guard.lock.acquire(blocking=False):
                guard.owner, guard.what, guard.depth = me, what, 1
            else:
                raise RuntimeError(f"This pipeline is already running {guard.what or 'a call'} in another thread; use "
                                   f"one pipeline per thread (pipelines made with from_pipe share its models) or call "
                                   f"it from one thread.")
            taken.append(guard)
        yield
    finally:
        for guard in reversed(taken):
            guard.depth -= 1
            if guard.depth == 0:
                guard.owner, guard.what = None, ""
                guard.lock.release()


def exclusive(method):
    """Run `method` holding the pipeline (see `hold`); the holding thread may call it again."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with hold(self, f"{method.__name__}()"):
            return method(self, *args, **kwargs)

    return run
