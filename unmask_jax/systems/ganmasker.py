"""GANMasker (paper 004): stage 1 finds the mask, stage 2 unmasks with MURF.

``config.model.stage`` picks what a run trains:

* ``seg`` (stage 1, M-Seg): one network, ``segmenter``, masked face -> mask probabilities;
  loss ``config.loss.seg_terms`` (BCE + Dice on the map); no discriminator. Evaluation reports
  ``dice`` and ``pixel_accuracy`` of the thresholded map.
* ``unmask`` (stage 2, FU-Net): ``generator`` on concat(masked face, mask map) (4 channels) and
  a spectrally normalised ``discriminator``, trained on the ground-truth map with the
  pix2pix-family sequential step (LSGAN; the MURF composite
  ``G(x) * m + x * (1 - m)`` before every loss; ``config.loss.terms``). Evaluation and
  prediction chain the two stages: stage 1, read from the run in
  ``config.model.segmenter_workdir`` (its own recorded config rebuilds it), predicts the map,
  thresholded at ``model.mask_threshold``; the top-level metrics are this two-stage result
  and a ``gt_mask`` sub-dict holds the same metrics with the ground-truth map. Without a
  segmenter run only the ``gt_mask`` result can be computed: evaluation then stops with a
  message saying so.
* ``one_stage`` (the paper's ablation): a 3-channel FU-Net with no map and no MURF; its
  output is scored as it is (``output`` = ``raw``).

Perceptual term: VGG19 features when a converted VGG19 weights file is found (the term's
``weights`` or the weights dir), else the offline VGG16 (same layer names); the log and the
evaluation JSON (``perceptual_backbone``) say which one ran.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp

from unmask_jax import loss_terms, models
from unmask_jax.state import TrainState
from unmask_jax.systems import base
from unmask_jax.systems.pix2pix import Pix2PixSystem

log = logging.getLogger(__name__)

STAGES = ("seg", "unmask", "one_stage")


_WARNED_VGG16: list[bool] = []


def _resolve_perceptual(terms: dict[str, Any], check_files: bool = True
                        ) -> tuple[dict[str, Any], str | None]:
    """VGG19 only where its converted weights exist; otherwise VGG16 (logged). Without
    ``check_files`` (ahead-of-time compilation) the configured backbone is kept."""
    terms = {k: dict(v) for k, v in terms.items()}
    for name, spec in terms.items():
        if (spec.get("type") or name) != "perceptual" or spec.get("backbone") != "vgg19":
            continue
        if not check_files:
            return terms, "vgg19"
        from unmask_jax.features import weights as weights_lib
        try:
            weights_lib.resolve_converted("vgg19", spec.get("weights"))
            return terms, "vgg19"
        except weights_lib.MissingWeightsError as e:
            if spec.get("weights"):
                raise  # a file the user named and that is not there is an error
            if not _WARNED_VGG16:  # once per process (a system is built more than once)
                _WARNED_VGG16.append(True)
                log.warning("perceptual loss: no converted VGG19 weights (%s); using the "
                            "offline ImageNet VGG16 with the same layers instead",
                            " ".join(str(e).split()))
            spec["backbone"] = "vgg16"
            return terms, "vgg16"
    backbones = [v.get("backbone", "vgg16") for k, v in terms.items()
                 if (v.get("type") or k) == "perceptual"]
    return terms, (backbones[0] if backbones else None)


@dataclasses.dataclass(frozen=True)
class SegmenterRun:
    """A finished stage-1 (M-Seg) run, loaded for inference by a later stage or by
    ``--mode=predict``: ``module.apply(variables, masked, train=False)`` gives mask
    probabilities (N, H, W, 1); ``threshold`` is the run's ``model.mask_threshold``."""

    module: Any
    variables: Any
    threshold: float
    resolution: int
    step: int
    workdir: str


def load_segmenter_run(workdir: str) -> SegmenterRun:
    """Stage 1's network and variables from its run (``config.model.segmenter_workdir``),
    rebuilt with the config that run recorded. Raises ValueError when the run is not a
    GANMasker stage-1 run, ``checkpoints`` errors when it holds no usable checkpoint."""
    from ml_collections import config_dict

    from unmask_jax import checkpoints, state as state_lib
    recorded = config_dict.ConfigDict(checkpoints.recorded_config(workdir))
    if recorded.get("system") != "ganmasker" or recorded.model.get("stage") != "seg":
        raise ValueError(f"config.model.segmenter_workdir={workdir} is not a GANMasker "
                         "stage-1 run (configs/ganmasker.py:seg)")
    seg_state, seg_system, _ = state_lib.load_state(recorded, workdir)
    log.info("two-stage inference: stage 1 from %s (step %d)", workdir, int(seg_state.step))
    return SegmenterRun(module=seg_system.S,
                        variables=jax.device_get(seg_state.nets["segmenter"].variables),
                        threshold=float(recorded.model.get("mask_threshold", 0.5)),
                        resolution=int(recorded.data.resolution), step=int(seg_state.step),
                        workdir=str(workdir))


#: GANMasker's CPU programs run their convolutions on Eigen: its 3x3 convolutions' kernel
#: gradients 2-3x faster than on YNNPACK, two-stage inference 0.76-0.87x -> 0.94-0.99x
#: PyTorch at batch 8 (``benchmarks/README.md``, "XLA CPU convolution library").
CPU_LIBRARY = "eigen"


class GANMaskerSegSystem(base.System):
    """Stage 1: M-Seg, BCE + Dice, no discriminator."""

    name = "ganmasker_seg"
    cpu_library = CPU_LIBRARY
    #: Stage 1 has no generator or discriminator: their keys, which configs before the
    #: config split recorded for it too, change nothing here (an old stage-1 run resumes).
    resume_safe_keys = ("model.generator*", "model.discriminator*", "model.generator_inputs",
                        "model.composite_in_training", "loss.terms.*", "loss.d_scale",
                        "loss.update_order", "optim.networks.generator.*",
                        "optim.networks.discriminator.*")

    def __init__(self, config, abstract_frozen: bool = False):
        super().__init__(config, abstract_frozen)
        m = config.model
        kwargs = dict(m.segmenter_kwargs)
        self.objective = loss_terms.Objective.from_config(
            config.loss.seg_terms, where="config.loss.seg_terms", prefix="seg_",
            dtype=base.compute_dtype(config))
        self.networks = {"segmenter": base.Network(
            models.create_model(m.segmenter, dtype=base.compute_dtype(config), **kwargs),
            lambda r: ((1, r, r, 3),), m.segmenter, kwargs)}
        self.S = self.networks["segmenter"].module

    def predict_needs(self) -> base.PredictNeeds:
        return base.PredictNeeds(
            unmasks=False, map_threshold=float(self.config.model.get("mask_threshold", 0.5)))

    def describe(self) -> str:
        return "stage 1 (M-Seg): masked face -> mask map, " + " + ".join(
            self.objective.names())

    def load_frozen(self, training: bool = True) -> dict[str, Any]:
        return {"loss": self.objective.load(self.abstract_frozen) if training else {}}

    def train_step(self, state, batch, frozen, txs):
        seg = state.nets["segmenter"]

        def loss_fn(params):
            pred, cols = base.apply_train(self.S, seg, batch["masked"], params=params)
            total, terms = self.objective(frozen["loss"], {"mask_pred": pred,
                                                            "mask": batch["mask"]})
            return total, (cols, terms)

        (loss, (cols, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(seg.params)
        finite = base.all_finite(loss, grads)
        nets = base.commit_if_finite(finite, state.nets, txs=txs, grads={"segmenter": grads},
                                     collections={"segmenter": cols})
        metrics = {"seg_loss": loss, "nonfinite": 1.0 - finite.astype(jnp.float32), **terms}
        return state.replace(step=state.step + 1, nets=nets), metrics

    def predict(self, state, batch, frozen=None, **kwargs):
        return {"mask": base.apply_eval(self.S, state.nets["segmenter"], batch["masked"])}


class GANMaskerSystem(Pix2PixSystem):
    """Stage 2 (FU-Net + SN discriminator, MURF) or the one-stage ablation."""

    name = "ganmasker"
    cpu_library = CPU_LIBRARY

    def __init__(self, config, abstract_frozen: bool = False):
        self.stage = config.model.stage
        terms, self.perceptual_backbone = _resolve_perceptual(config.loss.terms.to_dict(),
                                                              check_files=not abstract_frozen)
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.loss.terms = terms
        super().__init__(config, abstract_frozen)
        if self.stage == "unmask" and tuple(self.generator_inputs) != ("masked", "mask"):
            raise ValueError("config.model.generator_inputs must be ('masked', 'mask') for "
                             "stage 'unmask'")
        self.threshold = float(config.model.mask_threshold)
        self.segmenter_workdir = config.model.segmenter_workdir
        self._segmenter = None

    def predict_needs(self) -> base.PredictNeeds:
        two_stage = self.stage == "unmask"
        return base.PredictNeeds(mask_map="mask" in self.generator_inputs,
                                 finds_map=two_stage,
                                 map_threshold=self.threshold if two_stage else None)

    def inference_frozen(self, find_map: bool) -> dict[str, Any]:
        # Without find_map (the user's masks) stage 1 is not loaded.
        return (self.load_frozen(training=False) if find_map
                else super().load_frozen(training=False))

    def predict_variant(self, find_map: bool) -> dict[str, Any]:
        if self.stage != "unmask":
            return {}
        return {"mask_source": "segmenter" if find_map else "gt"}

    def describe(self) -> str:
        what = ("stage 2 (FU-Net, MURF, SN discriminator)" if self.stage == "unmask"
                else "one-stage ablation (FU-Net, no map)")
        return f"{what}: {super().describe()}; perceptual {self.perceptual_backbone}"

    def eval_info(self) -> dict[str, Any]:
        return {"perceptual_backbone": self.perceptual_backbone, "stage": self.stage,
                "segmenter_workdir": self.segmenter_workdir}

    def eval_variants(self) -> dict[str, dict[str, Any]]:
        if self.stage != "unmask":
            return {"": {}}
        if not self.segmenter_workdir and not self.abstract_frozen:
            raise ValueError(
                "GANMasker stage 'unmask' evaluates the two-stage chain: set "
                "config.model.segmenter_workdir to a finished stage-1 run (configs/"
                "ganmasker.py:seg); the ground-truth-map result is reported beside it")
        return {"": {"mask_source": "segmenter"}, "gt_mask": {"mask_source": "gt"}}

    def load_frozen(self, training: bool = True) -> dict[str, Any]:
        frozen = super().load_frozen(training)
        if self.stage == "unmask" and self.abstract_frozen:
            if not training:  # the two-stage inference: stage 1 as this config declares it
                frozen["segmenter"] = self._segmenter_shapes()
        elif self.stage == "unmask" and self.segmenter_workdir:
            frozen["segmenter"] = self._load_segmenter()
        return frozen

    def _segmenter_shapes(self) -> Any:
        """Stage 1's variable shapes from this config's ``model.segmenter`` (and its
        kwargs), for compiling the two-stage inference without a stage-1 run."""
        m = self.config.model
        self._segmenter = models.create_model(m.segmenter, dtype=base.compute_dtype(self.config),
                                              **dict(m.segmenter_kwargs))
        r = self.config.data.resolution
        return jax.eval_shape(lambda: self._segmenter.init(
            jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3), jnp.float32), train=False))

    def _load_segmenter(self) -> dict[str, Any]:
        """Stage 1's variables from its run, rebuilt with the config it recorded."""
        run = load_segmenter_run(self.segmenter_workdir)
        self._segmenter = run.module
        return run.variables

    def predict(self, state: TrainState, batch: base.Batch, frozen: Any = None,
                mask_source: str = "gt") -> dict[str, jax.Array]:
        gen = state.nets["generator"]
        if self.stage == "one_stage":
            raw = base.apply_eval(self.G, gen, self.generator_input(batch))
            return {"output": raw, "raw": raw}
        out = {}
        if mask_source == "segmenter":
            if self._segmenter is None:
                raise ValueError("two-stage prediction needs stage 1: load_frozen() with "
                                 "config.model.segmenter_workdir set")
            prob = self._segmenter.apply(frozen["segmenter"], batch["masked"], train=False)
            mask = (prob >= self.threshold).astype(batch["masked"].dtype)
            out["mask"] = prob
        else:
            mask = batch["mask"]
        g_in = jnp.concatenate([batch["masked"], mask], axis=-1)
        raw = base.apply_eval(self.G, gen, g_in)
        out.update(output=base.composite(raw, batch, mask), raw=raw)
        return out


def system_class(config) -> type[base.System]:
    """The stage's class: ``model.stage`` 'seg' (M-Seg) or 'unmask' (FU-Net)."""
    stage = config.model.get("stage")
    if stage not in STAGES:
        raise ValueError(f"config.model.stage={stage!r}: choose one of {STAGES}")
    return GANMaskerSegSystem if stage == "seg" else GANMaskerSystem


def build(config, abstract_frozen: bool = False) -> base.System:
    return system_class(config)(config, abstract_frozen)


build.system_class = system_class  # type: ignore[attr-defined]  # systems.system_class
