"""Systems by name: ``config.system`` -> the class that declares a paper's networks, inputs,
optimisers, step and inference (see :mod:`unmask_jax.systems.base`).

Adding a paper's system adds a module here and one entry in ``SYSTEMS``; the trainer does not
change.
"""
from __future__ import annotations

from typing import Callable

from unmask_jax.systems import ganmasker
from unmask_jax.systems.base import System
from unmask_jax.systems.pix2pix import Pix2PixSystem
from unmask_jax.systems.unveilify import UnVeilifySystem

#: config.system -> constructor (a class, or a function choosing among a family's classes).
SYSTEMS: dict[str, Callable[..., System]] = {
    "pix2pix": Pix2PixSystem,
    "ganmasker": ganmasker.build,
    "unveilify": UnVeilifySystem,
}


def build(config, abstract_frozen: bool = False) -> System:
    """The system ``config.system`` names, built from the config (bad values fail here).

    ``abstract_frozen``: its frozen networks are shapes only, and no weights file or earlier
    run is read (``--mode=compile``; :class:`~unmask_jax.systems.base.System`)."""
    name = config.get("system", None)
    if name not in SYSTEMS:
        raise ValueError(f"config.system={name!r}: choose one of {sorted(SYSTEMS)}")
    return SYSTEMS[name](config, abstract_frozen=abstract_frozen)


def system_class(config) -> type[System]:
    """The class ``config`` builds (a family's constructor chooses by the config), without
    building it: its class-level declarations (``resume_safe_keys``)."""
    name = config.get("system", None)
    if name not in SYSTEMS:
        raise ValueError(f"config.system={name!r}: choose one of {sorted(SYSTEMS)}")
    make = SYSTEMS[name]
    return make if isinstance(make, type) else make.system_class(config)


__all__ = ["SYSTEMS", "System", "build", "system_class"]
