"""Paper 004, GANMasker (two-stage): systems.md section 5.

Variants (``--config=configs/ganmasker.py:<variant>``):

- ``:seg`` -- stage 1, M-Seg (5 Se-blocks Conv3x3-BN-ReLU-CBAM-MaxPool, 5 decoder blocks,
  sigmoid map), BCE + Dice, 25 epochs.
- ``:unmask`` (default) -- stage 2, FU-Net on concat(masked face, mask map) (4 channels): 5
  residual-attention Ge-blocks with CBAM, dilated bottleneck (rates 2, 4, 8, 16), LeakyReLU
  decoder; MURF composite G(x) * m + x * (1 - m) before every loss; spectrally normalised
  discriminator on concat(generator input, image); trained on the ground-truth map, 100
  epochs. Evaluation and prediction chain the stages: set
  ``--config.model.segmenter_workdir=<the :seg run>``; the JSON's top level is the two-stage
  result, ``gt_mask`` the same metrics with the ground-truth map.
- ``:one_stage`` -- the paper's ablation: a 3-channel FU-Net with no map (and so no MURF).
- ``:512`` -- stage 2 at 512x512, batch 8.
- ``:seg_quick``, ``:unmask_quick``, ``:one_stage_quick`` -- 64x64, small widths, a few CPU
  minutes.
- ``:starter_seg``, ``:starter`` -- the starter weights shipped in ``weights/`` (see
  ``weights/MODEL_CARD.md``): 128x128, reduced widths (both stages' inference networks fit
  25 MB), trained on the real LFW + CelebA training splits with synthesised masks that often
  carry ear loops; ``--config.data.data_dir`` is the folder holding ``lfw/`` and ``celeba/``.
  ``benchmarks/starter_weights.py`` trains and packs them.

Paper values: LSGAN (a = 0 fake, b = 1 real, c = 1); reconstruction 0.5 * (SmoothL1 +
(1 - SSIM)); perceptual SmoothL1 on ImageNet VGG19 features; batch 32 at 256^2 (8 at 512^2);
lr 1e-3 divided by 10 at steps 30k, 40k and 45k. Choices the paper leaves open, written here
(each a config key):

- loss weights alpha / beta / gamma = 1 / 100 / 10 (a close public analogue), so the terms
  are gan 1, smooth_l1 50, ssim 50 (= 100 * 0.5 * (SmoothL1 + 1 - SSIM)), perceptual 10;
- perceptual layers relu1_2, relu2_2, relu3_3, relu4_2, equal weights, SmoothL1 (beta 1);
  VGG19 needs converted torchvision weights (``python -m unmask_jax.features convert
  --kind=vgg19 ...``); without them the offline VGG16 runs with the same layers, and the log
  and the evaluation JSON (``perceptual_backbone``) say so;
- Adam betas (0.5, 0.999) (not given; the pix2pix values), eps 1e-8;
- widths (``*_kwargs``), CBAM reduction 16, discriminator depth: see the models' docstrings
  (unmask_jax/models/ganmasker.py);
- the discriminator sees concat(generator input, image), as in pix2pix;
- D loss 0.5 * ((D(real) - 1)^2 + D(fake)^2);
- the stage-1 map is thresholded at 0.5 before stage 2 (``model.mask_threshold``);
- evaluation runs the networks in eval mode (running BatchNorm statistics).
Data: the paper masks CelebA with MaskTheFace (25k pairs, 80/20 split, 5k extra tests); the
default source here is the embedded synthetic one; CelebA with
``--config.data.source=celeba --config.data.data_dir=PATH``.
"""
from ml_collections import config_dict

from configs import default, pix2pix

VARIANTS = ("seg", "unmask", "one_stage", "512", "seg_quick", "unmask_quick",
            "one_stage_quick", "starter_seg", "starter")

#: This file's runs in the one-protocol reproduction (configs/reproduce.py): entry -> the
#: paper's variant, the small-widths variant, the report's label, its row, whether it removes
#: masks and whether it sees an identity image.
REPRODUCE = {
    "ganmasker_seg": dict(paper="seg", small="seg_quick", label="GANMasker stage 1 (M-Seg)",
                          row=5, unmasks=False, identity=False),
    # maps_from: the entry whose run gives its mask maps (model.segmenter_workdir).
    "ganmasker": dict(paper="unmask", small="unmask_quick", label="GANMasker two-stage",
                      row=6, unmasks=True, identity=False, maps_from="ganmasker_seg"),
    "ganmasker_one_stage": dict(paper="one_stage", small="one_stage_quick",
                                label="GANMasker one-stage (ablation)", row=7, unmasks=True,
                                identity=False),
}
#: The paper's claims (see configs/ye.py).
CLAIMS = (
    dict(claim="GANMasker: two-stage beats one-stage", entry="ganmasker",
         against="ganmasker_one_stage", key="psnr"),
)


def get_config(variant: str = "unmask"):
    variant = default.variant("ganmasker", variant, VARIANTS, default="unmask")
    stage = variant.replace("_quick", "").replace("starter_", "")
    stage = "unmask" if stage in ("512", "starter") else stage
    c = default.get_config()
    if stage != "seg":  # stages with a generator: the pix2pix family's step and sections
        c = pix2pix.family(c)
    c.name = f"ganmasker_{variant}"
    c.system = "ganmasker"

    c.model.stage = stage
    c.model.segmenter = "ganmasker_mseg"
    c.model.segmenter_kwargs = config_dict.ConfigDict({"base_width": 32})
    # The :seg run whose maps stage 2 evaluates and predicts with: model.segmenter_workdir.
    c.model.mask_threshold = 0.5
    if stage != "seg":
        c.model.generator = "ganmasker_funet"
        c.model.generator_kwargs = config_dict.ConfigDict({"base_width": 32})
        c.model.discriminator = "ganmasker_discriminator"
        c.model.discriminator_kwargs = config_dict.ConfigDict({"ndf": 64, "n_layers": 3})
        c.model.generator_inputs = ("masked",) if stage == "one_stage" else ("masked", "mask")
        c.model.composite_in_training = stage == "unmask"  # MURF
        c.loss.terms = config_dict.ConfigDict({
            "gan": {"weight": 1.0, "kind": "lsgan"},
            "smooth_l1": {"weight": 50.0, "beta": 1.0},
            "ssim": {"weight": 50.0},
            "perceptual": {"weight": 10.0, "backbone": "vgg19",
                           "layers": ("relu1_2", "relu2_2", "relu3_3", "relu4_2"),
                           "layer_weights": (1.0, 1.0, 1.0, 1.0), "criterion": "smooth_l1",
                           "weights": config_dict.placeholder(str)},
        })
        c.loss.d_scale = 0.5
    c.loss.seg_terms = config_dict.ConfigDict({"bce": {"weight": 1.0},
                                               "dice": {"weight": 1.0}})

    c.optim.lr = 1e-3
    c.optim.schedule = "step"
    c.optim.boundaries_steps = (30_000, 40_000, 45_000)
    c.optim.decay_factor = 0.1
    c.optim.constant_epochs = None
    c.optim.decay_epochs = None
    c.optim.networks.segmenter = default.network_optim_overrides()

    c.data.jitter_scale = 1.0  # the paper reports no crop jitter
    c.train.batch_size = 32
    c.train.num_epochs = 25 if stage == "seg" else 100
    c.eval.bn_statistics = "running"
    if variant == "512":
        c.data.resolution = 512
        c.train.batch_size = 8
    if variant.endswith("_quick"):
        _quick(c, stage)
    if variant.startswith("starter"):
        _starter(c, stage)
    return c


def _starter(c, stage: str) -> None:
    """The starter weights: the paper's losses and layer types at 128x128 with reduced widths,
    trained in about 1 h 25 min of a 2-core CPU in all (stage 1: 2000 steps at batch 16, 12
    minutes; stage 2: 3000 steps at batch 8, 71 minutes).

    Widths: M-Seg base 16 (1.19 M parameters) and FU-Net base 16 (4.38 M): 22 MB in float32
    for both inference networks. Data: the real faces of LFW (deep-funneled, dlib landmarks
    from the cache) and the CelebA aligned subset (its fixed aligned points), training splits
    joined; evaluation during training on LFW's held-out identities. Masks: every type, ear
    loops on 3 masks in 4 (real photos have them; they are part of the map)."""
    c.data.source = "lfw+celeba"
    c.data.data_dir = "../shared/data"
    c.data.source_options.landmarks = "auto"
    c.data.eval_split = "test"
    c.data.resolution = 128
    c.data.mask = config_dict.ConfigDict({"straps_prob": 0.75})
    c.model.segmenter_kwargs.base_width = 16
    if stage != "seg":
        c.model.generator_kwargs.base_width = 16
        c.model.discriminator_kwargs.ndf = 32
        c.loss.terms.perceptual.layers = ("relu1_2", "relu2_2", "relu3_3")
        c.loss.terms.perceptual.layer_weights = (1.0, 1.0, 1.0)
    c.train.batch_size = 16 if stage == "seg" else 8
    c.train.num_epochs = None
    c.train.num_steps = 2000 if stage == "seg" else 3000
    c.optim.boundaries_steps = (1400, 1800) if stage == "seg" else (2100, 2600)
    c.train.log_every_steps = 50
    c.train.sample_every_steps = 250
    c.train.checkpoint_every_steps = 250
    c.train.eval_every_steps = 1000
    c.eval.num_images = 64
    c.eval.batch_size = 16


def _quick(c, stage: str) -> None:
    """64x64, small widths, a few CPU minutes; the same losses, inputs and layer types.

    Also shrunk here, for time: stage 2 trains at batch 8 with the perceptual term on the
    first two VGG blocks (relu1_2, relu2_2; the VGG features cost more than the networks at
    this size); stage 1 trains 600 steps (its Dice needs them)."""
    c.data.resolution = 64
    c.data.source_options.num_records = 2000
    c.model.segmenter_kwargs.base_width = 8
    if stage != "seg":
        c.model.generator_kwargs.base_width = 16
        c.model.discriminator_kwargs.ndf = 16
        c.model.discriminator_kwargs.n_layers = 2
        c.loss.terms.perceptual.layers = ("relu1_2", "relu2_2")
        c.loss.terms.perceptual.layer_weights = (1.0, 1.0)
    c.train.batch_size = 16 if stage == "seg" else 8
    c.train.num_epochs = None
    c.train.num_steps = 600 if stage == "seg" else 300
    c.optim.boundaries_steps = (450, 550) if stage == "seg" else (200, 260)
    c.train.log_every_steps = 50
    c.train.sample_every_steps = 100
    c.train.checkpoint_every_steps = 100
    c.train.eval_every_steps = c.train.num_steps
    c.eval.num_images = 64
    c.eval.batch_size = 16
