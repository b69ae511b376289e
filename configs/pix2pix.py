"""Paper 000, "Unmask Masked Face" (pix2pix): systems.md sections 0 and 1.

Reproduces: unet_256 generator on the 3-channel masked face, 70x70 PatchGAN on
concat(masked, image) (6 ch), BCE-with-logits adversarial loss (weight 1) + L1 (weight 100,
the pix2pix values; the paper gives no weights), D loss halved, Adam 2e-4 (0.5, 0.999),
batch 1, 100 epochs constant + 100 epochs linear decay, 286 -> 256 jitter + flips.
Deviations: data. The paper trains on Face Mask Lite (paired StyleGAN faces, not available
offline); the default here is the embedded synthetic source. Point it at the paired folders
with --config.data.source=paired --config.data.data_dir=PATH (mask maps derived and stored).
Variants: ``:quick`` (64x64, small widths, ~3 min on CPU).

This file is also the pix2pix family's config home (``unmask_jax.systems.pix2pix``: pix2pix,
Ye A/B/C, the TF tutorial, GANMasker's stage 2): :func:`family` adds the family's networks,
losses and per-network optimiser sections to the shared ``configs/default.py``; :func:`quick`
is the family's 64x64 variant.
"""
from ml_collections import config_dict

from configs import default

#: This file's runs in the one-protocol reproduction (configs/reproduce.py): entry -> the
#: paper's variant, the small-widths variant, the report's label, its row, whether it removes
#: masks and whether it sees an identity image.
REPRODUCE = {
    "pix2pix": dict(paper="", small="quick", label="pix2pix (Isola et al.)", row=0,
                    unmasks=True, identity=False),
}


VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    variant = default.variant("pix2pix", variant, VARIANTS)
    c = family(default.get_config())
    c.name = "pix2pix"
    if variant == "quick":
        c = quick(c)
        c.name = "pix2pix_quick"
    return c


def family(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The pix2pix family's sections on the shared config ``c``: the pix2pix core
    (systems.md section 0): unet_256 + 70x70 PatchGAN, BCE + 100 L1, sequential updates."""
    c.system = "pix2pix"
    c.model.generator = "pix2pix_unet"
    c.model.generator_kwargs = config_dict.ConfigDict(
        dict(num_downs=8, ngf=64, out_channels=3, use_dropout=True))
    c.model.discriminator = "patchgan"
    c.model.discriminator_kwargs = config_dict.ConfigDict(dict(ndf=64, n_layers=3))
    # What the generator sees: "masked" (3 ch) or "masked", "mask" (4 ch). The discriminator
    # sees concat(its condition, image); its condition is the generator input.
    c.model.generator_inputs = ("masked",)
    # MURF composite during training: out = G(x) * mask + masked * (1 - mask). Evaluation
    # always composites.
    c.model.composite_in_training = False
    # Start from PyTorch weights (.safetensors/.pt in the network's PyTorch layout, e.g. the
    # canonical pix2pix one; see unmask_jax.export). Used only when no checkpoint exists.
    c.model.generator_init = config_dict.placeholder(str)
    c.model.discriminator_init = config_dict.placeholder(str)

    # Generator terms (unmask_jax.loss_terms registry; functions in unmask_jax.losses):
    # name -> {weight, [type], [pred], [target], options}; the type defaults to the name.
    # Types: gan (kind vanilla | lsgan), l1, smooth_l1 (beta), mse, ssim, bce, dice,
    # perceptual (backbone vgg16 | vgg19, layers, layer_weights, criterion, weights), lpips
    # (net alex | vgg16), identity (backbone dlib | arcface_* | irse50, weights, crop). Each
    # is logged as g_<name>. pix2pix: BCE-with-logits adversarial + 100 * L1.
    c.loss.terms = config_dict.ConfigDict({
        "gan": {"weight": 1.0, "kind": "vanilla"},
        "l1": {"weight": 100.0},
    })
    c.loss.d_scale = 0.5                  # D loss = d_scale * (real + fake)
    # sequential: PyTorch pix2pix (D update, then G against the updated D);
    # simultaneous: the TF tutorial (one tape, both against the pre-update D, real first).
    c.loss.update_order = "sequential"
    c.optim.networks = config_dict.ConfigDict({
        "generator": default.network_optim_overrides(),
        "discriminator": default.network_optim_overrides()})
    return c


def quick(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The family's ``:quick`` variant: 64x64, a 6-level U-Net, 300 steps, < 5 minutes on a
    2-core CPU.

    Keeps the system's losses, inputs and layer types; shrinks resolution, widths, steps.
    """
    c.data.resolution = 64
    # Every source takes num_records: synthetic renders 2000 faces, file sources keep at most
    # 2000 records per split, spread over identities (data_pipelines.sources).
    c.data.source_options.num_records = 2000
    c.model.generator_kwargs.num_downs = 6
    c.model.generator_kwargs.ngf = 32
    c.model.discriminator_kwargs.ndf = 32
    c.model.discriminator_kwargs.n_layers = 2
    c.train.batch_size = 16
    c.train.num_epochs = None
    c.train.num_steps = 300
    c.optim.schedule = "linear_decay"
    c.optim.constant_epochs = None
    c.optim.decay_epochs = None
    c.optim.constant_steps = 200
    c.optim.decay_steps = 100
    c.optim.lr = 5e-4
    c.train.log_every_steps = 50
    c.train.sample_every_steps = 100
    c.train.checkpoint_every_steps = 100
    c.train.eval_every_steps = 300
    c.eval.num_images = 64
    c.eval.batch_size = 16
    return c
