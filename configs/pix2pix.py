"""Paper 000, "Unmask Masked Face" (pix2pix): systems.md sections 0 and 1.

Reproduces: unet_256 generator on the 3-channel masked face, 70x70 PatchGAN on
concat(masked, image) (6 ch), BCE-with-logits adversarial loss (weight 1) + L1 (weight 100,
the pix2pix values; the paper gives no weights), D loss halved, Adam 2e-4 (0.5, 0.999),
batch 1, 100 epochs constant + 100 epochs linear decay, 286 -> 256 jitter + flips.
Deviations: data. The paper trains on Face Mask Lite (paired StyleGAN faces, not available
offline); the default here is the embedded synthetic source. Point it at the paired folders
with --config.data.source=paired --config.data.data_dir=PATH (mask maps derived and stored).
Variants: ``:quick`` (64x64, small widths, ~3 min on CPU).
"""
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
    c = default.get_config()
    c.name = "pix2pix"
    if variant == "quick":
        c = default.quick(c)
        c.name = "pix2pix_quick"
    return c
