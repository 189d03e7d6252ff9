"""fewstep's schedulers as diffusers' and mindone's own schedulers.

diffusers and mindone accept a scheduler only if its class derives from *their* `SchedulerMixin` (and
`ConfigMixin`): `from_pretrained(..., scheduler=...)` checks it, `save_pretrained` looks for it to
find the save method. fewstep's `TCDScheduler` / `LCMScheduler` live in the framework-free core, and
`import fewstep` must not import diffusers. So the mixins are added to the shared facade's bases
(`ConsistencyScheduler.__bases__`) when the library is imported, whichever comes first: the core's
registry runs these hooks then (`fewstep.core.registry.register_library_hook`).

The facade's own methods come first in the MRO (config round trip, `from_pretrained`,
`save_pretrained`, the config-attribute fallback), so behaviour does not change; the mixins add
their identity, `compatibles`-style helpers and anything else diffusers code reaches for.
"""

from __future__ import annotations

from fewstep.core.schedulers.scheduler import ConsistencyScheduler


def _adopt(*mixins) -> None:
    missing = tuple(m for m in mixins if not issubclass(ConsistencyScheduler, m))
    if missing:
        ConsistencyScheduler.__bases__ = ConsistencyScheduler.__bases__ + missing


def adopt_diffusers() -> None:
    from diffusers import ConfigMixin, SchedulerMixin  # the public names (the modules behind them have moved before)

    _adopt(SchedulerMixin, ConfigMixin)


def adopt_mindone() -> None:
    from mindone.diffusers.configuration_utils import ConfigMixin
    from mindone.diffusers.schedulers.scheduling_utils import SchedulerMixin

    _adopt(SchedulerMixin, ConfigMixin)
