"""Paper 003, Sharma et al., "Masked GANs for Face Completion": systems.md section 4.

No code was published; the reported loop ("49.73 s per 1000 steps", 200,000 steps) matches
the TensorFlow pix2pix tutorial, reproduced here: its own U-Net layer order (Conv -> BN ->
LeakyReLU(0.3), Keras BN momentum 0.99 / eps 1e-3), its discriminator (ZeroPad + Conv 512),
BCE from logits with D loss = real + fake (no 0.5), LAMBDA 100, Adam(2e-4, 0.5), batch 1,
its train_step (one tape: both gradients against the pre-update discriminator, D on the
real pair before the generated one; ``loss.update_order = "simultaneous"``),
286 -> 256 jitter + mirroring, 200k steps at a constant rate, checkpoint every 5k steps.
Deviation: data (the paper's 70/30 split of its own masked set is not available): synthetic
by default; any source by override.
"""
from configs import default, pix2pix

#: This file's runs in the one-protocol reproduction (configs/reproduce.py): entry -> the
#: paper's variant, the small-widths variant, the report's label, its row, whether it removes
#: masks and whether it sees an identity image.
REPRODUCE = {
    "tf_tutorial": dict(paper="", small="quick", label="Masked GANs (TF pix2pix tutorial)",
                        row=4, unmasks=True, identity=False),
}


VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    variant = default.variant("masked_gan", variant, VARIANTS)
    c = pix2pix.family(default.get_config())
    c.name = "masked_gan"
    c.model.generator = "tf_pix2pix_unet"
    c.model.generator_kwargs = {}
    c.model.discriminator = "tf_patchgan"
    c.model.discriminator_kwargs = {}
    c.loss.d_scale = 1.0
    c.loss.terms.l1.weight = 100.0
    # The tutorial's train_step: one GradientTape, both gradients against the pre-update D,
    # D called on the real pair first, then on the generated one.
    c.loss.update_order = "simultaneous"
    c.train.batch_size = 1
    default.constant_schedule_for_steps(c, 200_000)
    c.train.checkpoint_every_steps = 5000
    if variant == "quick":
        c = pix2pix.quick(c)
        c.model.generator_kwargs = {"num_downs": 6, "ngf": 32}
        c.model.discriminator_kwargs = {"ndf": 32}
        c.name = "masked_gan_quick"
    return c
