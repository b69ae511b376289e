"""Backend-specific forms of the layers: one seam, one switch, one home.

The models are plain Flax: a ``Conv`` computes ``lax.conv_general_dilated``, a
``ConvTranspose`` ``lax.conv_transpose``. Where a
platform runs another form of the same maths faster (measured), the form lives here, in one
module per platform (:mod:`unmask_jax.backends.cpu`, :mod:`unmask_jax.backends.tpu`), and
the layers ask :func:`forms` for it at trace time. Every form gives the plain form's numbers
up to float rounding, and keeps the parameters' shapes (checkpoints and export are
untouched).

What applies is set by :func:`use` (a ``with`` block; ``System.jit`` enters it for every
program it compiles, with the platform of the devices the program is compiled for, which
is not the host's when compiling ahead of time):

* ``platform``: 'cpu', 'gpu', 'tpu', ...;
* ``forms``: ``auto`` (the forms measured to help on that platform) or ``off`` (plain XLA
  ops everywhere): ``config.model.backend_forms``;
* ``cpu_library``: which XLA CPU library a CPU program is compiled for (a system may state
  one it prefers, ``System.cpu_library``): ``ynnpack`` (XLA's default), ``eigen`` (Eigen
  convolutions; YNNPACK keeps dots and reductions) or ``no_ynnpack`` (no YNNPACK fusions).

Outside any :func:`use` block the target is ``jax.default_backend()`` with ``auto`` forms.
A jitted function keeps the forms it was traced with (the jit cache does not key on this
setting): :func:`jit` traces under the setting it compiles for.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any, Callable, Iterator

import jax

log = logging.getLogger(__name__)

FORMS = ("auto", "off")
CPU_LIBRARIES = ("ynnpack", "eigen", "no_ynnpack")


@dataclasses.dataclass(frozen=True)
class Target:
    """What layers are traced for: the platform, whether its forms apply, the CPU library."""

    platform: str
    forms: str = "auto"
    cpu_library: str = "ynnpack"

    def __post_init__(self) -> None:
        check_forms(self.forms)
        check_cpu_library(self.cpu_library)


def check_forms(forms: str) -> str:
    if forms not in FORMS:
        raise ValueError(f"backend forms {forms!r}: choose one of {FORMS} "
                         "(config.model.backend_forms)")
    return forms


def check_cpu_library(library: str) -> str:
    if library not in CPU_LIBRARIES:
        raise ValueError(f"XLA CPU library {library!r}: choose one of {CPU_LIBRARIES}")
    return library


_target: Target | None = None
_announced: set[Target] = set()


def target() -> Target:
    """The target layers are traced for now (:func:`use`, else the default backend)."""
    return _target if _target is not None else Target(jax.default_backend())


@contextlib.contextmanager
def use(platform: str, forms: str = "auto", cpu_library: str = "ynnpack") -> Iterator[Target]:
    """Trace layers for ``platform`` with ``forms`` for the duration of a ``with`` block
    (restores the previous target)."""
    global _target
    previous = _target
    _target = Target(str(platform).lower(), forms, cpu_library)
    try:
        yield _target
    finally:
        _target = previous


class PlainForms:
    """Every layer in its plain form: the ``plain`` function each method is given."""

    name = "plain"

    def conv2d(self, plain: Callable[..., Any], x, kernel, strides, padding, dilation):
        return plain(x, kernel, strides, padding, dilation)

    def conv_transpose(self, plain: Callable[..., Any], x, kernel, strides, padding,
                       output_padding):
        return plain(x, kernel, strides, padding, output_padding)

    def compiler_options(self) -> dict[str, str]:
        return {}


PLAIN = PlainForms()


def forms(for_target: Target | None = None) -> Any:
    """The forms provider of ``for_target`` (default: :func:`target`): the platform's module
    when its forms apply, else :data:`PLAIN`. Logs the choice once per target."""
    t = for_target or target()
    if t.forms == "off" or t.platform not in ("cpu", "tpu"):
        provider: Any = PLAIN
    elif t.platform == "tpu":
        from unmask_jax.backends import tpu
        provider = tpu.FORMS
    else:
        from unmask_jax.backends import cpu
        provider = cpu.forms(t.cpu_library)
    if t not in _announced:
        _announced.add(t)
        log.info("layers traced for %s (forms %s, CPU library %s): %s forms", t.platform,
                 t.forms, t.cpu_library, provider.name)
    return provider


def jit(fn: Callable[..., Any], *, platform: str | None = None, forms: str = "auto",
        cpu_library: str = "ynnpack", **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` traced and compiled for ``platform`` (default
    ``jax.default_backend()``): the layers are traced under :func:`use` (no CPU form reaches
    an accelerator program) and a CPU program gets its library's XLA options (none off the
    CPU). The returned function calls the program; its ``lower(*args)`` lowers it under the
    same setting (``.compile()`` then compiles it), e.g. for abstract arguments on
    compile-only devices."""
    t = Target((platform or jax.default_backend()).lower(), forms, cpu_library)
    provider = globals()["forms"](t)
    options = provider.compiler_options()
    jitted = jax.jit(fn, compiler_options=options or None, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with use(t.platform, t.forms, t.cpu_library):
            return jitted(*args, **kwargs)

    def lower(*args: Any, **kwargs: Any) -> Any:
        with use(t.platform, t.forms, t.cpu_library):
            return jitted.lower(*args, **kwargs)

    call.jitted = jitted  # type: ignore[attr-defined]
    call.lower = lower  # type: ignore[attr-defined]
    call.target = t  # type: ignore[attr-defined]
    call.compiler_options = dict(options)  # type: ignore[attr-defined]
    return call
