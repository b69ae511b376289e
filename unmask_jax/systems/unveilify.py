"""UnVeilify (paper 002): identity-conditioned unmasking with a pSp encoder and a
StyleGAN2-style U-Net generator.

Networks (``unmask_jax.models.unveilify``):

* ``generator``: the reference's ``MaskRemover`` (its trainer calls it the generator and
  optimises it as one): a pSp encoder (IR-SE50 body, GradualStyleBlocks) maps the identity
  image to W+ styles; the UNetStyleGAN generator turns the masked face into the unmasked one,
  modulated by those styles. ``--mode=summary`` lists its two parts (``psp_encoder``,
  ``generator``) with their parameter counts.
* ``discriminator``: PatchGAN on concat(image, identity image), InstanceNorm, logits here
  (the reference's sigmoid is inside the BCE-with-logits loss; its PyTorch export has it).

Config keys read here: ``model.generator`` / ``model.discriminator`` (+ ``*_kwargs``),
``model.input_norm`` (``imagenet``: the reference feeds ImageNet mean/std-normalised images
to every network and its output lives in that space; ``unit``: the project's [-1, 1]),
``model.psp_irse50_init`` (a converted ``model_ir_se50.pth``, see ``python -m
unmask_jax.features convert``: the pSp input layer and body start from it, as the pSp paper
does; unset = random init, as the UnVeilify reference does; logged either way), ``loss.terms`` (:mod:`unmask_jax.loss_terms`; ``gan`` reads
D's logits on the output; pixel terms may compare ``output_model`` / ``target_model``, the
images in the networks' space), ``loss.d_scale``.

The step is the reference's order, the shared sequential step
(:mod:`unmask_jax.systems.gan_step`): one generator forward; D updated on the detached fake
and the real image (two calls; with InstanceNorm only they equal the reference's one call on
both) with loss d_scale * (real + fake); then the generator's loss against the updated D,
through the same forward pass. Two deliberate departures from the reference code, both documented in
``configs/unveilify.py``: the identity term's gradient reaches the generator (the reference
swaps the arguments and detaches the generator's features), and LPIPS and the identity
network see images in their own [-1, 1] convention (the reference hands them
ImageNet-normalised images).

Evaluation and prediction run both networks in eval mode (running BatchNorm statistics). The
networks never see a mask map; as for the pix2pix family, the evaluation's composited output
keeps the input's known pixels outside the ground-truth map, and the ``raw_*`` metrics score
the whole generated image (what the paper reports).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from unmask_jax import loss_terms, models
from unmask_jax.state import TrainState
from unmask_jax.systems import base, gan_step

log = logging.getLogger(__name__)

INPUT_NORMS = ("imagenet", "unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The generator's parts that ``--mode=summary`` counts separately.
GENERATOR_PARTS = ("psp_encoder", "generator")


def to_model_space(x: jax.Array, norm: str) -> jax.Array:
    """[-1, 1] images -> the networks' input space."""
    if norm == "unit":
        return x
    mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
    std = jnp.asarray(IMAGENET_STD, x.dtype)
    return ((x + 1.0) * 0.5 - mean) / std


def from_model_space(y: jax.Array, norm: str) -> jax.Array:
    """The networks' output space -> [-1, 1] images (the inverse of ``to_model_space``)."""
    if norm == "unit":
        return y
    mean = jnp.asarray(IMAGENET_MEAN, y.dtype)
    std = jnp.asarray(IMAGENET_STD, y.dtype)
    return (y * std + mean) * 2.0 - 1.0


def _resolve_identity(terms: dict[str, Any], check_files: bool = True
                      ) -> tuple[dict[str, Any], str | None]:
    """The identity term runs IR-SE50 / ArcFace only where its converted weights exist;
    otherwise the offline dlib port (logged). A file the user named must exist. Without
    ``check_files`` (ahead-of-time compilation) the configured backbone is kept."""
    terms = {k: dict(v) for k, v in terms.items()}
    for name, spec in terms.items():
        if (spec.get("type") or name) != "identity" or not spec.get("weight"):
            continue
        backbone = spec.get("backbone", "dlib")
        if backbone == "dlib" or not check_files:
            return terms, backbone
        from unmask_jax.features import weights as weights_lib
        try:
            weights_lib.resolve_converted(backbone, spec.get("weights"))
            return terms, backbone
        except weights_lib.MissingWeightsError as e:
            if spec.get("weights"):
                raise
            log.warning("identity loss: no converted %s weights (%s); using the offline dlib "
                        "face-recognition ResNet instead", backbone, " ".join(str(e).split()))
            spec["backbone"] = "dlib"
            return terms, "dlib"
    return terms, None


class UnVeilifySystem(base.System):
    name = "unveilify"
    #: The pSp encoder's IR-SE50 start is read only when a run starts without a checkpoint.
    resume_safe_keys = ("model.psp_irse50_init",)

    def __init__(self, config, abstract_frozen: bool = False):
        terms, self.identity_backbone = _resolve_identity(config.loss.terms.to_dict(),
                                                          check_files=not abstract_frozen)
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.loss.terms = terms
        super().__init__(config, abstract_frozen)
        m = config.model
        if m.input_norm not in INPUT_NORMS:
            raise ValueError(f"config.model.input_norm={m.input_norm!r}: choose one of "
                             f"{INPUT_NORMS}")
        if not config.data.identity_image:
            raise ValueError("UnVeilify conditions on another photo of the person: set "
                             "config.data.identity_image=True")
        if config.eval.bn_statistics != "running":
            raise ValueError("config.eval.bn_statistics: UnVeilify evaluates in eval mode "
                             "('running'), as its reference does")
        self.input_norm = m.input_norm
        self.d_scale = float(config.loss.d_scale)
        self.remat = bool(config.train.get("remat", False))
        self.objective = loss_terms.Objective.from_config(config.loss.terms,
                                                          dtype=base.compute_dtype(config))
        gan_terms = [t for t in self.objective.terms if t.type == "gan"]
        if len(gan_terms) != 1:
            raise ValueError("config.loss.terms: UnVeilify needs exactly one 'gan' term, got "
                             f"{len(gan_terms)}")
        self.gan_kind = dict(gan_terms[0].options)["kind"]
        dtype = base.compute_dtype(config)
        g_kwargs, d_kwargs = dict(m.generator_kwargs), dict(m.discriminator_kwargs)
        if g_kwargs.get("resolution", 256) != config.data.resolution:
            raise ValueError(
                f"config.model.generator_kwargs.resolution={g_kwargs.get('resolution', 256)} "
                f"must equal config.data.resolution={config.data.resolution} (the pSp encoder "
                "and the generator are built for one input size)")
        self.networks = {
            "generator": base.Network(
                models.create_model(m.generator, dtype=dtype, **g_kwargs),
                lambda r: ((1, r, r, 3), (1, r, r, 3)), m.generator, g_kwargs),
            "discriminator": base.Network(
                models.create_model(m.discriminator, dtype=dtype, **d_kwargs),
                lambda r: ((1, r, r, 3), (1, r, r, 3)), m.discriminator, d_kwargs),
        }
        self.G = self.networks["generator"].module
        self.D = self.networks["discriminator"].module
        self.psp_irse50_init = m.get("psp_irse50_init")
        if self.psp_irse50_init and m.get("generator_init"):
            raise ValueError("config.model.psp_irse50_init and config.model.generator_init both "
                             "set: the PyTorch MaskRemover weights already hold the pSp encoder; "
                             "set one of them")

    def predict_needs(self) -> base.PredictNeeds:
        return base.PredictNeeds(identity=True)

    def describe(self) -> str:
        return (f"masked face + identity image ({self.input_norm} input), pSp styles -> "
                f"StyleGAN2-style U-Net; identity-conditioned PatchGAN; identity loss "
                f"{self.identity_backbone}")

    def summary_parts(self, network: str) -> tuple[str, ...]:
        return GENERATOR_PARTS if network == "generator" else ()

    def eval_info(self) -> dict[str, Any]:
        return {"identity_loss_backbone": self.identity_backbone,
                "input_norm": self.input_norm,
                "psp_init": self.psp_irse50_init or "random"}

    def load_frozen(self, training: bool = True) -> dict[str, Any]:
        return {"loss": self.objective.load(self.abstract_frozen) if training else {}}

    def pretrained_variables(self, name: str, variables: Mapping[str, Any]
                             ) -> Mapping[str, Any] | None:
        """The pSp body from converted IR-SE50 weights (``model.psp_irse50_init``)."""
        if name != "generator":
            return None
        if not self.psp_irse50_init:
            log.warning("pSp encoder: random initialisation, as the UnVeilify reference (set "
                        "config.model.psp_irse50_init to a converted model_ir_se50.pth to start "
                        "its body from IR-SE50, as the pSp paper does)")
            return None
        from unmask_jax.features import weights as weights_lib
        from unmask_jax.models import unveilify as unveilify_models
        irse = weights_lib.load_converted("irse50", self.psp_irse50_init)
        out = dict(variables)
        psp = {k: v["psp_encoder"] for k, v in variables.items() if "psp_encoder" in v}
        psp = unveilify_models.psp_variables_from_irse(psp, irse)
        for k, v in psp.items():
            out[k] = {**variables[k], "psp_encoder": v}
        log.warning("pSp encoder: input layer and body initialised from IR-SE50 weights %s",
                    self.psp_irse50_init)
        return out

    # -- the step ----------------------------------------------------------------------------

    def _inputs(self, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
        """The masked face and the identity image in the networks' space."""
        n = self.input_norm
        return to_model_space(batch["masked"], n), to_model_space(batch["identity"], n)

    def train_step(self, state: TrainState, batch: base.Batch, frozen: Any,
                   txs: Mapping[str, optax.GradientTransformation]
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        """The shared sequential G/D step (:mod:`unmask_jax.systems.gan_step`): G(masked,
        identity); D sees (image, identity) in the networks' space; G's objective reads the
        output in both spaces."""
        gen = state.nets["generator"]
        masked, identity = self._inputs(batch)
        target = to_model_space(batch["target"], self.input_norm)

        def g_objective(output_model, logits):
            inputs = {"output": from_model_space(output_model, self.input_norm),
                      "target": batch["target"], "output_model": output_model,
                      "target_model": target, "identity": batch["identity"],
                      "fake_logits": logits}
            return self.objective(frozen["loss"], inputs)

        parts = gan_step.GanParts(
            generate=lambda g_params: base.apply_train(self.G, gen, masked, identity,
                                                       params=g_params),
            discriminate=lambda disc, d_params, image: base.apply_train(
                self.D, disc, image, identity, params=d_params),
            real=target, g_objective=g_objective, gan_kind=self.gan_kind,
            d_scale=self.d_scale)
        return gan_step.train_step("sequential", state, txs, parts, remat=self.remat)

    # -- inference ---------------------------------------------------------------------------

    def predict(self, state: TrainState, batch: base.Batch, frozen: Any = None
                ) -> dict[str, jax.Array]:
        masked, identity = self._inputs(batch)
        out = base.apply_eval(self.G, state.nets["generator"], masked, identity)
        raw = from_model_space(out, self.input_norm)
        return {"output": base.composite(raw, batch), "raw": raw}

