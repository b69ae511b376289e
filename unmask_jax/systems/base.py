"""The System interface: what a paper's system declares, and helpers every system's step uses.

A *system* (one module per family in this package, registered by ``config.system``) says:

* ``networks``: the trained networks by name (:class:`Network`: Flax module, example input
  shapes, and the registry name + kwargs that export uses);
* ``init_variables(rng, resolution)``: their initial variables (``{"params", ...}``, other
  collections such as ``batch_stats`` are the network's mutable state);
* ``optimizers(steps_per_epoch)``: one optax transform per trained network
  (``config.optim`` defaults, ``config.optim.networks.<name>`` overrides);
* ``load_frozen(training)``: variables of networks it uses but does not train (loss feature
  networks, an earlier stage), loaded once, passed to the jitted step and to ``predict`` as
  the ``frozen`` argument. A system built with ``abstract_frozen=True`` (ahead-of-time
  compilation, ``--mode=compile``) returns their shapes instead (``jax.ShapeDtypeStruct``
  leaves) and reads no weights file or earlier run: the configured networks are compiled,
  never a fallback chosen because a file is missing here;
* ``train_step(state, batch, frozen) -> (state, metrics)``: pure, jitted by the trainer with
  the state donated;
* ``predict(state, batch, frozen, **variant) -> {"output", "raw", ["mask"]}``: the
  inference output in [-1, 1], composited (known pixels kept) and raw, and the mask map where
  it makes one (a segmentation stage returns only ``mask``);
* ``pretrained_variables(name, variables)`` (optional): a network's start from pretrained
  weights the config names; ``summary_parts(name)``: parts counted separately by
  ``--mode=summary``;
* ``eval_variants()`` / ``eval_info()``: extra evaluation runs of ``predict`` (e.g. with the
  ground-truth map) and facts for the evaluation JSON.

The trainer (``unmask_jax.train``) owns the loop, mesh and shardings, donation,
checkpoints, logging, evaluation scheduling and preemption; state creation and loading live
in ``unmask_jax.state``. :func:`commit_if_finite` is the non-finite guard any step can use.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unmask_jax import backends, optim
from unmask_jax.state import NetState, TrainState

Batch = Mapping[str, jax.Array]
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Network:
    """A trained network: its module, example input shapes (batch 1) for initialisation,
    and its registry name and constructor arguments (export, summaries)."""

    module: nn.Module
    input_shapes: Callable[[int], tuple[tuple[int, ...], ...]]
    model_name: str
    model_kwargs: Mapping[str, Any]
    init_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"train": False})


def compute_dtype(config) -> Any:
    name = config.train.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.train.compute_dtype={name!r}: choose one of "
                         f"{sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class PredictNeeds:
    """What a system's ``predict`` needs to run on photos (``--mode=predict``).

    unmasks     it removes masks (False: a segmenter, whose output is only a map);
    mask_map    its generator takes the mask map (a stage-1 run or the user's masks give it);
    finds_map   it finds the map itself when its stage-1 run is configured
                (``predict(..., mask_source="segmenter")``, GANMasker two-stage);
    identity    it conditions on another photo of the same person;
    map_threshold  where it makes a map (a segmentation stage; ``finds_map``), the
                probability from which a pixel is masked.
    """

    unmasks: bool = True
    mask_map: bool = False
    finds_map: bool = False
    identity: bool = False
    map_threshold: float | None = None


class System:
    """Base class: subclasses set ``networks`` in ``__init__`` and implement the step."""

    #: Registry name (``config.system``).
    name: str = ""
    #: Config keys (fnmatch patterns) of this system that may change when a run resumes,
    #: beside ``checkpoints.SAFE_CONFIG_KEYS`` (e.g. a pretrained start read only when a run
    #: starts without a checkpoint).
    resume_safe_keys: tuple[str, ...] = ()

    def __init__(self, config, abstract_frozen: bool = False):
        self.config = config
        #: True: ``load_frozen`` gives shapes, and no weights file decides a backbone.
        self.abstract_frozen = bool(abstract_frozen)
        self.networks: dict[str, Network] = {}
        #: 'auto' (the forms measured to help on the platform a program is compiled for) or
        #: 'off' (plain XLA ops): ``config.model.backend_forms`` (:mod:`unmask_jax.backends`).
        self.backend_forms = backends.check_forms(config.model.get("backend_forms", "auto"))

    #: The XLA CPU library this system's CPU programs are compiled for
    #: (:data:`unmask_jax.backends.CPU_LIBRARIES`); a system states another where it measured
    #: faster (GANMasker: 'eigen'). Ignored off the CPU.
    cpu_library: str = "ynnpack"

    def jit(self, fn: Callable[..., Any], *, platform: str | None = None,
            **jit_kwargs: Any) -> Callable[..., Any]:
        """``jax.jit(fn, **jit_kwargs)`` for this system's programs, traced and compiled for
        ``platform``: the platform of the devices the program runs on (default
        ``jax.default_backend()``), e.g. 'tpu' when compiling ahead of time for TPU devices
        from a CPU host, with :attr:`backend_forms` and :attr:`cpu_library`
        (:func:`unmask_jax.backends.jit`)."""
        return backends.jit(fn, platform=platform, forms=self.backend_forms,
                            cpu_library=self.cpu_library, **jit_kwargs)

    # -- inference on photos (``--mode=predict``) ------------------------------------------

    def inference_frozen(self, find_map: bool) -> dict[str, Any]:
        """The ``frozen`` argument of ``predict`` on photos; ``find_map`` False: the map comes
        from elsewhere (the user's masks, a map run), so a stage that finds it is not
        loaded."""
        del find_map
        return self.load_frozen(training=False)

    def predict_variant(self, find_map: bool) -> dict[str, Any]:
        """``predict``'s keyword arguments on photos (``find_map``: it finds the map itself,
        ``PredictNeeds.finds_map``)."""
        del find_map
        return {}

    # -- initialisation ----------------------------------------------------------------------

    def init_variables(self, rng: jax.Array, resolution: int) -> dict[str, dict[str, Any]]:
        """Initial variables of every trained network (pure; jit or eval_shape it)."""
        out = {}
        keys = jax.random.split(rng, len(self.networks))  # in declaration order
        for key, (name, net) in zip(keys, self.networks.items()):
            inputs = [jnp.zeros(s, jnp.float32) for s in net.input_shapes(resolution)]
            out[name] = dict(net.module.init({"params": key, "dropout": key}, *inputs,
                                             **net.init_kwargs))
        return out

    def optimizers(self, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
        return {name: optim.for_network(self.config.optim, name, steps_per_epoch)
                for name in sorted(self.networks)}

    def load_frozen(self, training: bool = True) -> dict[str, Any]:
        """Variables of the networks this system uses without training them: with
        ``training`` those of the loss terms too, else only what ``predict`` needs."""
        return {}

    def export_networks(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Trained network name -> (registry model name, kwargs), for PyTorch export."""
        return {n: (net.model_name, dict(net.model_kwargs)) for n, net in self.networks.items()}

    def describe(self) -> str:
        """One line for the summary: what the networks see."""
        return ""

    def summary_parts(self, network: str) -> tuple[str, ...]:
        """Top-level parts of a network whose parameters the summary counts separately."""
        return ()

    def pretrained_variables(self, name: str, variables: Mapping[str, Any]
                             ) -> Mapping[str, Any] | None:
        """Initial variables of network ``name`` from pretrained weights the config names
        (e.g. a backbone), applied when a run starts without a checkpoint; None keeps
        ``variables``. Runs on the host, outside jit."""
        return None

    def eval_variants(self) -> dict[str, dict[str, Any]]:
        """Evaluation runs of ``predict``: name -> keyword arguments. "" is the system's own
        inference (the top-level metrics); others are reported as sub-dicts."""
        return {"": {}}

    def eval_info(self) -> dict[str, Any]:
        """Facts about the run that the evaluation JSON records (e.g. which backbone ran)."""
        return {}

    def predict_needs(self) -> PredictNeeds:
        """What ``predict`` needs on photos (see :class:`PredictNeeds`)."""
        return PredictNeeds()

    # -- the step and inference --------------------------------------------------------------

    def train_step(self, state: TrainState, batch: Batch, frozen: Any,
                   txs: Mapping[str, optax.GradientTransformation]
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        raise NotImplementedError

    def predict(self, state: TrainState, batch: Batch, frozen: Any, **kwargs
                ) -> dict[str, jax.Array]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Helpers for steps (pure).
# --------------------------------------------------------------------------------------------


def apply_train(module: nn.Module, net: NetState | tuple[Any, Any], *inputs,
                rngs=None, params=None, **kwargs) -> tuple[Any, dict[str, Any]]:
    """Training-mode forward pass; returns (output, updated mutable collections)."""
    params = net.params if params is None else params
    collections = net.collections
    out, mutated = module.apply({"params": params, **collections}, *inputs, train=True,
                                rngs=rngs or {}, mutable=list(collections), **kwargs)
    return out, {k: mutated.get(k, v) for k, v in collections.items()}


def apply_eval(module: nn.Module, net: NetState, *inputs, **kwargs):
    """Eval-mode forward pass (running statistics, no dropout)."""
    return module.apply({"params": net.params, **net.collections}, *inputs, train=False,
                        **kwargs)


def all_finite(*trees) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack(leaves))


def commit_if_finite(finite: jax.Array, nets: Mapping[str, NetState], *,
                     txs: Mapping[str, optax.GradientTransformation],
                     grads: Mapping[str, Any] | None = None,
                     updated: Mapping[str, tuple[Any, Any]] | None = None,
                     collections: Mapping[str, Any] | None = None) -> dict[str, NetState]:
    """The non-finite guard: the new networks when ``finite``, else the old ones unchanged.

    ``grads[name]``: the optimizer update of that network runs *inside* the taken branch of a
    conditional, so the common path writes the new parameters once and copies nothing (a
    select over the finished new state copied the whole state every step). ``updated[name]``:
    (params, opt_state) already computed (e.g. a D updated before G's loss). ``collections``:
    new mutable collections (BatchNorm statistics), chosen by a select (they are small).
    Networks in none of these keep their state.
    """
    grads, updated, collections = dict(grads or {}), dict(updated or {}), dict(collections or {})

    def commit(operands):
        params, opt_states, grads_, updated_ = operands
        out = dict(updated_)
        for name, g in grads_.items():
            updates, opt = txs[name].update(g, opt_states[name], params[name])
            out[name] = (optax.apply_updates(params[name], updates), opt)
        return out

    def keep(operands):
        params, opt_states, _, _ = operands
        out = {name: (nets[name].params, nets[name].opt_state) for name in updated}
        out.update({name: (params[name], opt_states[name]) for name in grads})
        return out

    changed = jax.lax.cond(
        finite, commit, keep,
        ({n: nets[n].params for n in grads}, {n: nets[n].opt_state for n in grads}, grads,
         updated))
    out = dict(nets)
    for name, (params, opt_state) in changed.items():
        out[name] = out[name].replace(params=params, opt_state=opt_state)
    for name, new in collections.items():
        old = nets[name].collections
        out[name] = out[name].replace(collections=jax.tree.map(
            lambda a, b: jnp.where(finite, a, b), new, old))
    return out


def composite(output: jax.Array, batch: Batch, mask: jax.Array | None = None) -> jax.Array:
    """Keeps the known pixels: output inside the mask map, the masked input outside it."""
    mask = batch["mask"] if mask is None else mask
    return output * mask + batch["masked"] * (1.0 - mask)
