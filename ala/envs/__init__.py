"""Environment adapters, chosen once from the env id (in the spirit of Sample Factory's `register_env`).

`adapter_for(env_id)` tries, in order: adapters that packages register under the entry point group `ala.envs`
(a subclass of `EnvAdapter` with its own `matches`), the MiniGrid/BabyAI adapter (ALA's own plug-in, registered the
same way, so `import ala.envs` imports no MiniGrid), then the generic adapter for any Gymnasium env with a Discrete
action space and a Box observation.

Register your own in your package's `pyproject.toml`:

    [project.entry-points."ala.envs"]
    my-family = "my_package.ala_adapter:MyAdapter"
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging

from ala.envs.base import EnvAdapter, UnsupportedEnv

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ala.envs"
OWN_DISTRIBUTION = "ala"


def registered_adapters() -> list[type[EnvAdapter]]:
    """Every adapter registered under the entry point group, loaded (so imported) only now: users' packages first,
    sorted by name, then ALA's own (MiniGrid/BabyAI), so a user's adapter can claim ids a built-in one would."""

    def order(entry_point: importlib.metadata.EntryPoint) -> tuple[bool, str]:
        own = entry_point.dist is not None and entry_point.dist.name == OWN_DISTRIBUTION
        return own, entry_point.name

    adapters = []
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=order):
        adapter = entry_point.load()
        if not (isinstance(adapter, type) and issubclass(adapter, EnvAdapter)):
            raise TypeError(f"entry point {ENTRY_POINT_GROUP}:{entry_point.name} is not an EnvAdapter subclass")
        adapters.append(adapter)
    return adapters


@functools.cache
def adapter_for(env_id: str) -> EnvAdapter:
    """The adapter serving `env_id`, looked up once per id (entry points are read from disk; adapters hold no state
    but the id, so one instance serves every caller: the advisor's review asks per chunk)."""
    for adapter in registered_adapters():
        if adapter.matches(env_id):
            return adapter(env_id)
    return EnvAdapter(env_id)


__all__ = ["EnvAdapter", "UnsupportedEnv", "adapter_for", "registered_adapters"]
