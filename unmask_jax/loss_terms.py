"""Loss terms that a config names with weights: the registry every system's objective uses.

A system's config lists its generator terms in ``config.loss.terms``::

    c.loss.terms = {
        "gan": {"weight": 1.0, "kind": "vanilla"},          # adversarial (vanilla | lsgan)
        "l1": {"weight": 100.0},                            # pixel terms
        "perceptual": {"weight": 10.0, "backbone": "vgg19", "layers": (...), ...},
        "l1_mask": {"type": "l1", "weight": 5.0, ...},     # a second term of one type
    }

Each entry is ``name -> {"weight", ["type"], ["pred"], ["target"], options...}``: ``type``
defaults to the name; ``pred`` / ``target`` name the tensors the term compares (defaults per
type below; a system supplies them in the ``inputs`` mapping); the other keys are the type's
options, checked here. A weight of 0 removes the term.

| type | compares (default) | options |
|---|---|---|
| gan | ``fake_logits`` (D's logits on the output) | kind: vanilla (BCE with logits), lsgan |
| l1, mse, ssim | ``output`` vs ``target`` | |
| smooth_l1 | ``output`` vs ``target`` | beta (1.0) |
| bce | ``mask_pred`` vs ``mask`` | from_logits (False: probabilities, torch BCELoss) |
| dice | ``mask_pred`` vs ``mask`` | smooth (1.0) |
| perceptual | ``output`` vs ``target`` | backbone (vgg16, offline; vgg19 needs ``weights``), layers, layer_weights, criterion (distance: l1 / smooth_l1 / mse), input_norm, smooth_l1_beta, weights |
| lpips | ``output`` vs ``target`` | net (alex / vgg16), reduction |
| identity | ``output`` vs ``target`` | backbone (dlib, offline port; arcface_iresnet50/100, irse50 need ``weights``), weights, crop, resize, reduction |

``reduction`` (lpips, identity): ``mean`` over the batch (default) or ``sum`` (UnVeilify's
reference code sums both over the batch, so their weight grows with the batch size).

Feature networks (perceptual, lpips, identity) are frozen: :meth:`Objective.load` reads their
real weights once and returns their variables, which the trainer passes into the jitted step
as an argument (replicated, never donated, never baked in as constants);
``load(abstract=True)`` returns only their shapes (``jax.ShapeDtypeStruct``), read from no
weights file, for ahead-of-time compilation (``--mode=compile``). They run in the
objective's compute ``dtype`` (``config.train.compute_dtype``) with float32 parameters and
float32 distances and reductions. Every term's unweighted value is returned for logging as
``<prefix><name>``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from unmask_jax import losses

log = logging.getLogger(__name__)

Array = jax.Array
Inputs = Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class TermType:
    """One registry entry: defaults and a builder ``options -> (fn, loader | None)``.

    ``fn(variables, pred, target) -> scalar``; ``loader(abstract, dtype) -> (fn, variables)``
    for frozen feature networks (the function may need the loaded network, e.g. dlib's spec):
    ``abstract`` gives the variables' shapes only (no weights file is read), ``dtype`` is the
    compute dtype the network runs in."""

    pred: str
    target: str | None
    options: Mapping[str, Any]
    build: Callable[[Mapping[str, Any]], tuple[Callable | None, Callable | None]]


def _pixel(fn):
    return lambda opts: (lambda _v, p, t: fn(p, t), None)


def _gan(opts):
    if opts["kind"] not in losses.GAN_KINDS:
        raise ValueError(f"kind={opts['kind']!r}: choose one of {losses.GAN_KINDS}")
    return (lambda _v, logits, _t: losses.generator_gan_loss(logits, opts["kind"])), None


def _perceptual(opts):
    from unmask_jax.features import perceptual as perceptual_lib
    cfg = perceptual_lib.PerceptualConfig.from_dict(
        {k: opts[k] for k in ("backbone", "layers", "layer_weights", "criterion",
                              "input_norm", "smooth_l1_beta")})

    def load(abstract: bool, dtype: Any):
        variables = (perceptual_lib.perceptual_variable_shapes(cfg) if abstract else
                     perceptual_lib.load_perceptual_variables(cfg, opts["weights"]))
        return (lambda v, p, t: perceptual_lib.perceptual_loss(cfg, v, p, t, dtype=dtype)), \
            variables
    return None, load


REDUCTIONS = {"mean": jnp.mean, "sum": jnp.sum}


def _reduction(opts) -> Callable[[Array], Array]:
    if opts["reduction"] not in REDUCTIONS:
        raise ValueError(f"reduction={opts['reduction']!r}: choose one of {sorted(REDUCTIONS)}")
    return REDUCTIONS[opts["reduction"]]


def _lpips(opts):
    if opts["net"] not in ("alex", "vgg16"):
        raise ValueError(f"net={opts['net']!r}: choose alex or vgg16")
    reduce = _reduction(opts)

    def load(abstract: bool, dtype: Any):
        from unmask_jax.features import lpips as lpips_lib
        variables = (lpips_lib.lpips_variable_shapes(opts["net"]) if abstract else
                     lpips_lib.load_lpips(opts["net"]))
        return (lambda v, p, t: reduce(lpips_lib.lpips_distance(v, p, t, dtype=dtype))), \
            variables
    return None, load


def _identity(opts):
    from unmask_jax.features import identity as identity_lib
    if opts["backbone"] not in identity_lib.IDENTITY_BACKBONES:
        raise ValueError(f"backbone={opts['backbone']!r}: choose one of "
                         f"{identity_lib.IDENTITY_BACKBONES}")
    reduce = _reduction(opts)

    def load(abstract: bool, dtype: Any):
        net, variables = identity_lib.load_identity_net(
            opts["backbone"], opts["weights"], crop=opts["crop"], resize=opts["resize"],
            abstract=abstract, dtype=dtype)
        return (lambda v, p, t: reduce(identity_lib.identity_distances(net, v, p, t))), \
            variables
    return None, load


_PERCEPTUAL_DEFAULTS = dict(backbone="vgg16",
                            layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                            layer_weights=(1.0, 1.0, 1.0, 1.0), criterion="l1",
                            input_norm="imagenet", smooth_l1_beta=1.0, weights=None)

TYPES: dict[str, TermType] = {
    "gan": TermType("fake_logits", None, {"kind": "vanilla"}, _gan),
    "l1": TermType("output", "target", {}, _pixel(losses.l1_loss)),
    "mse": TermType("output", "target", {}, _pixel(losses.mse_loss)),
    "ssim": TermType("output", "target", {}, _pixel(losses.ssim_loss)),
    "smooth_l1": TermType("output", "target", {"beta": 1.0}, lambda o: (
        (lambda _v, p, t: losses.smooth_l1_loss(p, t, float(o["beta"]))), None)),
    "bce": TermType("mask_pred", "mask", {"from_logits": False}, lambda o: (
        (lambda _v, p, t: losses.bce_loss(p, t, bool(o["from_logits"]))), None)),
    "dice": TermType("mask_pred", "mask", {"smooth": 1.0}, lambda o: (
        (lambda _v, p, t: losses.dice_loss(p, t, float(o["smooth"]))), None)),
    "perceptual": TermType("output", "target", _PERCEPTUAL_DEFAULTS, _perceptual),
    "lpips": TermType("output", "target", {"net": "vgg16", "reduction": "mean"}, _lpips),
    "identity": TermType("output", "target", {"backbone": "dlib", "weights": None,
                                              "crop": None, "resize": "area",
                                              "reduction": "mean"}, _identity),
}


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    type: str
    weight: float
    pred: str
    target: str | None
    options: tuple[tuple[str, Any], ...]

    @property
    def frozen(self) -> bool:
        """True when the term runs a pretrained network whose variables must be loaded."""
        return self.type in ("perceptual", "lpips", "identity")


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


def parse_terms(spec: Mapping[str, Any], where: str = "config.loss.terms") -> tuple[Term, ...]:
    """Checks a ``{name: {weight, type?, pred?, target?, options...}}`` mapping; terms with
    weight 0 are dropped. Raises ValueError naming the bad key and the choices."""
    terms = []
    for name, entry in dict(spec).items():
        entry = dict(entry) if not isinstance(entry, (int, float)) else {"weight": entry}
        kind = entry.pop("type", None) or name
        if kind not in TYPES:
            raise ValueError(f"{where}.{name}: unknown term type {kind!r}; choose one of "
                             f"{sorted(TYPES)} (or set 'type')")
        if "weight" not in entry:
            raise ValueError(f"{where}.{name}: missing 'weight'")
        weight = float(entry.pop("weight"))
        ttype = TYPES[kind]
        pred = entry.pop("pred", None) or ttype.pred
        target = entry.pop("target", None) or ttype.target
        unknown = sorted(set(entry) - set(ttype.options))
        if unknown:
            raise ValueError(f"{where}.{name} ({kind}): unknown option(s) {unknown}; "
                             f"options: {sorted(ttype.options)}")
        options = {**ttype.options, **{k: v for k, v in entry.items() if v is not None}}
        try:
            ttype.build(options)  # validates option values without loading weights
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}.{name} ({kind}): {e}") from None
        if weight == 0.0:
            continue
        terms.append(Term(str(name), kind, weight, pred, target,
                          tuple(sorted((k, _hashable(v)) for k, v in options.items()))))
    # The adversarial term first, then the config's order (fixes the summation order).
    return tuple(sorted(terms, key=lambda t: t.type != "gan"))


class Objective:
    """A weighted sum of terms. Build from config, :meth:`load` the frozen networks once,
    then call it inside a jitted step: ``total, values = objective(frozen, inputs)``."""

    def __init__(self, terms: tuple[Term, ...], prefix: str = "g_", dtype: Any = jnp.float32):
        self.terms = tuple(terms)
        self.prefix = prefix
        self.dtype = dtype
        self._fns: dict[str, Callable] = {}
        for t in self.terms:
            fn, _ = TYPES[t.type].build(dict(t.options))
            if fn is not None:
                self._fns[t.name] = fn

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], where: str = "config.loss.terms",
                    prefix: str = "g_", dtype: Any = jnp.float32) -> "Objective":
        return cls(parse_terms(spec, where), prefix, dtype)

    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    def reads(self) -> set[str]:
        """The input names the terms compare (a system checks it supplies them)."""
        return {t.pred for t in self.terms} | {t.target for t in self.terms if t.target}

    def load(self, abstract: bool = False) -> dict[str, Any]:
        """Loads every frozen feature network (real weights, offline); returns
        ``{term name: variables}`` for the step's ``frozen`` argument. ``abstract``: their
        shapes only (``jax.ShapeDtypeStruct`` leaves), no weights file read."""
        variables = {}
        for t in self.terms:
            if not t.frozen:
                continue
            _, loader = TYPES[t.type].build(dict(t.options))
            fn, variables[t.name] = loader(abstract, self.dtype)
            self._fns[t.name] = fn
            log.info("loss term %s (%s, %s): frozen network %s", t.name, t.type,
                     dict(t.options).get("backbone") or dict(t.options).get("net"),
                     "shapes (abstract)" if abstract else "loaded")
        return variables

    def __call__(self, frozen: Mapping[str, Any], inputs: Inputs
                 ) -> tuple[Array, dict[str, Array]]:
        total = jnp.zeros((), jnp.float32)
        values = {}
        for t in self.terms:
            if t.name not in self._fns:
                raise RuntimeError(f"loss term {t.name!r} ({t.type}) needs its network: call "
                                   "Objective.load() and pass its result as `frozen`")
            missing = [k for k in (t.pred, t.target) if k and k not in inputs]
            if missing:
                raise KeyError(f"loss term {t.name!r} compares {missing}, which this system "
                               f"does not provide (it provides {sorted(inputs)})")
            value = self._fns[t.name](frozen.get(t.name), inputs[t.pred],
                                      inputs[t.target] if t.target else None)
            values[self.prefix + t.name] = value
            total = total + t.weight * value
        return total, values
