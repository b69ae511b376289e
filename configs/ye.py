"""Paper 001, Ye, "Mask Removal Algorithm using GAN based Models": systems.md section 2.

Variants:
- ``:a`` (Train A): pix2pix unet_256 + PatchGAN on the 3-channel masked face; BCE-with-logits
  adversarial loss + L1 weight 200; D loss halved; Adam 2e-4 (betas 0.5, 0.999: the paper
  names Adam only, pix2pix values); batch 10; 50k iterations at a constant rate (the paper
  gives no schedule); 256x256 LFW faces masked MaskTheFace-style.
- ``:b`` (Train B): as A with a 4-channel input (image + binary mask map); D sees 7 channels.
- ``:c`` (Train C, "customized GAN"): ``ye_unet_c``, a U-Net with 5 skip connections, a
  dilated stack (3x3, rates 2, 4, 8, 16, 256 channels, at the lowest resolution: the
  DeepFill-style reading; the paper gives no widths), squeeze-and-excitation (reduction 16)
  after each of the first three encoders, InstanceNorm (PyTorch eps 1e-5, affine False)
  instead of BatchNorm in G and D; SSIM loss weight 200 replacing L1; 4-channel input;
  batch 4; 50k iterations (as A/B). Layer details: unmask_jax/models/ye_custom.py.
- ``:a_quick`` / ``:b_quick`` / ``:c_quick``: the same systems at 64x64 for a few CPU
  minutes.
Data: the paper's data set is LFW; the default source here is the embedded synthetic one.
Use LFW with --config.data.source=lfw --config.data.data_dir=PATH/lfw
(--config.data.source_options.landmarks=dlib for detected landmarks).
"""
from configs import default, pix2pix

#: This file's runs in the one-protocol reproduction (configs/reproduce.py): entry -> the
#: paper's variant, the small-widths variant, the report's label, its row, whether it removes
#: masks and whether it sees an identity image.
REPRODUCE = {
    "ye_a": dict(paper="a", small="a_quick", label="Ye Train A (pix2pix, 3 ch)", row=1,
                 unmasks=True, identity=False),
    "ye_b": dict(paper="b", small="b_quick", label="Ye Train B (pix2pix, image + map)", row=2,
                 unmasks=True, identity=False),
    "ye_c": dict(paper="c", small="c_quick", label="Ye Train C (dilated SE U-Net, SSIM)",
                 row=3, unmasks=True, identity=False),
}
#: The paper's claims checked on the reproduction's numbers: ``entry`` beats ``against`` on
#: the metric ``key`` (higher is better unless ``higher=False``).
CLAIMS = (
    dict(claim="Ye: Train B beats Train A in the mask region", entry="ye_b", against="ye_a",
         key="psnr_mask"),
    dict(claim="Ye: Train B beats Train A on the whole raw output", entry="ye_b",
         against="ye_a", key="raw_psnr"),
    dict(claim="Ye: Train C beats Train B in the mask region", entry="ye_c", against="ye_b",
         key="psnr_mask"),
)


VARIANTS = ("a", "b", "c", "a_quick", "b_quick", "c_quick")


def get_config(variant: str = "a"):
    variant = default.variant("ye", variant, VARIANTS, default="a")
    c = pix2pix.family(default.get_config())
    train, quick = variant[0], variant.endswith("_quick")
    c.name = f"ye_{train}"
    c.loss.terms.l1.weight = 200.0
    c.loss.d_scale = 0.5
    c.train.batch_size = 10
    default.constant_schedule_for_steps(c, 50_000)  # 50k iterations, no decay given
    if train in ("b", "c"):
        c.model.generator_inputs = ("masked", "mask")
    if train == "c":
        c.model.generator = "ye_unet_c"
        c.model.generator_kwargs = {"ngf": 64, "dilated_channels": 256, "se_reduction": 16}
        c.model.discriminator_kwargs.norm = "instance"
        c.loss.terms.l1.weight = 0.0       # SSIM replaces L1
        c.loss.terms.ssim = {"weight": 200.0}
        c.train.batch_size = 4
        c.eval.bn_statistics = "running"   # InstanceNorm: no batch statistics to choose
    if quick:
        c = pix2pix.quick(c)
        c.name += "_quick"
        if train == "c":
            c.model.generator_kwargs = {"ngf": 16, "dilated_channels": 64, "se_reduction": 4}
    return c
