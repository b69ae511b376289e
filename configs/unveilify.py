"""Paper 002, UnVeilify (identity-preserving unmasking): systems.md section 3.

Variants (``--config=configs/unveilify.py:<variant>``):

- ``:ref`` (default) -- the public reference code's setting at 256x256: ``MaskRemover``
  (pSp encoder on the identity image -> 14 W+ styles; UNetStyleGAN generator on the masked
  face) and the identity-conditioned PatchGAN; 192,518,241 + 2,767,808 parameters
  (``--mode=summary`` lists pSp 176,474,816 and generator 16,043,425 separately).
- ``:quick`` -- 64x64, small widths, a few CPU minutes; the same losses, inputs and layer
  types. Its ``num_records=2000`` cap takes one image of every person before anyone's
  second, so on LFW (5,000+ people) it leaves nobody with a second photo: raise it there
  (``--config.data.source_options.num_records=20000`` keeps all of LFW) or use CelebA.

Reference values (its ``options/UnVeilify.yaml``, ``model/losses.py``, ``train.py``):

- loss 20 * L1 + 5 * LPIPS(VGG) + 0.5 * identity + 1 * BCE adversarial; D loss
  (real + fake) / 2; L1 is taken between the images in the networks' (ImageNet-normalised)
  space, as in the reference (``output_model`` / ``target_model``);
- the reference sums LPIPS (``.sum()``) and the identity term (a loop) over the batch, and
  averages L1 and BCE: ``reduction = "sum"`` keeps that (the spec sheet says mean; set
  ``--config.loss.terms.lpips.reduction=mean`` etc. for batch-size-independent weights);
- identity: 1 - cos of IR-SE50 (ArcFace) embeddings of the crop rows 35:223, cols 32:220,
  average-pooled to 112x112 (``crop``, ``resize = area``). It runs IR-SE50 when converted
  ``model_ir_se50.pth`` weights are found (``weights`` or the weights dir, ``python -m
  unmask_jax.features convert``); otherwise the offline dlib face ResNet, and the log and
  the evaluation JSON (``identity_loss_backbone``) say so;
- Adam lr 2e-4 (the paper's text says 2e-5; its code and config say 2e-4), betas (0.5, 0.9),
  eps 1e-8, both networks; the generator (pSp + U-Net, one optimiser in the reference) warms
  up for 5 epochs at lr * 10^(epoch - 5) (its ``LambdaLR``), then cosine annealing with warm
  restarts (T_0 50, T_mult 2); the discriminator keeps lr constant;
- batch 16, 100 epochs, early stopping with patience 10 evaluations (the reference monitors
  its validation loss; here the evaluation's PSNR, evaluated once per epoch of the paper's
  8,746 pairs at batch 16 = 547 steps);
- augmentation: masked face, target and map flipped vertically / horizontally and rotated by
  a multiple of 90 degrees together; the identity image flipped and rotated by up to 90
  degrees on its own;
- inputs normalised with ImageNet mean / std (``model.input_norm``), the output in that
  space, mapped back to [-1, 1] for the losses on images and for evaluation.

Two departures from the reference code, on purpose:

- the identity term's gradient reaches the generator (the reference swaps the arguments, so
  the generator's embedding is the detached one and it gets no identity gradient);
- LPIPS and the identity network see images in their own [-1, 1] convention (the reference
  hands them ImageNet-normalised images).

The pSp body starts from random init, as in the UnVeilify reference (which uses IR-SE50
weights only in its identity loss); ``model.psp_irse50_init`` naming a converted
``model_ir_se50.pth`` starts the pSp input layer and body from them instead, as the pSp paper
does (a departure from the UnVeilify code, logged). Style blocks beyond the generator's
depth (w[6..13] at 256x256) are computed but unused, as in the reference. Evaluation runs in
eval mode; as for every system, the top-level metrics score the output composited with the
ground-truth map and ``raw_*`` the whole generated image (the paper's numbers).
"""
from ml_collections import config_dict

from configs import default

VARIANTS = ("ref", "quick")

#: This file's runs in the one-protocol reproduction (configs/reproduce.py): entry -> the
#: paper's variant, the small-widths variant, the report's label, its row, whether it removes
#: masks and whether it sees an identity image.
REPRODUCE = {
    "unveilify": dict(paper="ref", small="quick", label="UnVeilify (identity image)", row=8,
                      unmasks=True, identity=True),
}
#: The paper's claims (see configs/ye.py); ``against="identity_free"``: the best of the
#: entries that remove masks without seeing an identity image.
CLAIMS = (
    dict(claim="UnVeilify: better identity similarity than identity-free systems",
         entry="unveilify", against="identity_free", key="id_sim"),
)
UNVEILIFY_CROP_256 = (35, 223, 32, 220)


def get_config(variant: str = "ref"):
    variant = default.variant("unveilify", variant, VARIANTS, default="ref")
    c = default.get_config()
    c.name = f"unveilify_{variant}"
    c.system = "unveilify"

    c.data.identity_image = True
    c.data.jitter_scale = 1.0          # the reference only resizes
    c.data.flip = True                 # horizontal flip of the pair
    c.data.vflip = True                # vertical flip of the pair
    c.data.rot90 = True                # rotation of the pair by k * 90 degrees
    c.data.identity_augment = "flip_rotate"  # identity image: own flips, rotation in [-90, 90]
    # Corners the rotation uncovers: the reference fills 0 in ImageNet-normalised space, i.e.
    # the ImageNet mean colour.
    c.data.identity_rotation_fill = (124, 116, 104)

    c.model.generator = "unveilify_mask_remover"
    c.model.generator_kwargs = config_dict.ConfigDict(dict(resolution=256, latent_dim=512))
    c.model.discriminator = "unveilify_discriminator"
    c.model.discriminator_kwargs = config_dict.ConfigDict()
    c.model.input_norm = "imagenet"    # imagenet (reference) | unit ([-1, 1])
    # Converted model_ir_se50.pth (pSp's ArcFace IR-SE50) for the pSp input layer and body
    # (the pSp paper's start; the UnVeilify reference starts from random init).
    c.model.psp_irse50_init = config_dict.placeholder(str)
    # Start from PyTorch weights (the reference's layouts, unmask_jax.export); used only when
    # no checkpoint exists.
    c.model.generator_init = config_dict.placeholder(str)
    c.model.discriminator_init = config_dict.placeholder(str)

    c.loss.terms = config_dict.ConfigDict({
        "gan": {"weight": 1.0, "kind": "vanilla"},
        "l1": {"weight": 20.0, "pred": "output_model", "target": "target_model"},
        "lpips": {"weight": 5.0, "net": "vgg16", "reduction": "sum"},
        "identity": {"weight": 0.5, "backbone": "irse50",
                     "weights": config_dict.placeholder(str),
                     "crop": UNVEILIFY_CROP_256, "resize": "area", "reduction": "sum"},
    })
    c.loss.d_scale = 0.5

    c.optim.lr = 2e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.9
    c.optim.eps = 1e-8
    c.optim.schedule = "warmup_cosine_restarts"
    c.optim.constant_epochs = None
    c.optim.decay_epochs = None
    c.optim.warmup_epochs = 5.0
    c.optim.warmup_shape = "exp10"
    c.optim.restart_period_epochs = 50.0
    c.optim.restart_mult = 2.0
    c.optim.min_lr = 0.0
    c.optim.networks = config_dict.ConfigDict({
        "generator": default.network_optim_overrides(),
        "discriminator": default.network_optim_overrides()})
    c.optim.networks.discriminator.schedule = "constant"

    c.train.batch_size = 16
    c.train.num_epochs = 100
    c.train.eval_every_steps = 547
    c.train.checkpoint_every_steps = 547
    c.train.early_stopping.metric = "psnr"
    c.train.early_stopping.mode = "max"
    c.train.early_stopping.patience = 10
    c.eval.bn_statistics = "running"
    if variant == "quick":
        _quick(c)
    return c


def scaled_crop(resolution: int) -> tuple[int, int, int, int]:
    """The reference's 256x256 identity crop at another resolution."""
    return tuple(int(round(v * resolution / 256)) for v in UNVEILIFY_CROP_256)


def _quick(c) -> None:
    """64x64, small widths, a few CPU minutes: 10 styles, a (1, 1, 1, 1)-block IR-SE body at
    width 1/4, a quarter-width generator; steps instead of epochs (linear warm-up over the
    first 20 steps, one cosine cycle); no early stopping."""
    c.data.resolution = 64
    c.data.source_options.num_records = 2000
    c.model.generator_kwargs = config_dict.ConfigDict(dict(
        resolution=64, latent_dim=128, psp_blocks=(1, 1, 1, 1), psp_width_div=4,
        generator_width_div=4))
    c.model.discriminator_kwargs = config_dict.ConfigDict(dict(ndf=16))
    c.loss.terms.identity.crop = scaled_crop(64)
    c.loss.terms.lpips.reduction = "mean"
    c.loss.terms.identity.reduction = "mean"
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = None
    c.optim.restart_period_epochs = None
    c.optim.warmup_steps = 20
    c.optim.warmup_shape = "linear"
    c.optim.restart_period_steps = 400
    c.optim.restart_mult = 1.0
    c.train.batch_size = 8
    c.train.num_epochs = None
    c.train.num_steps = 400
    c.train.early_stopping.metric = None
    c.train.log_every_steps = 50
    c.train.sample_every_steps = 100
    c.train.checkpoint_every_steps = 100
    c.train.eval_every_steps = c.train.num_steps
    c.eval.num_images = 64
    c.eval.batch_size = 16
