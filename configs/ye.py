"""Paper 001, Ye, "Mask Removal Algorithm using GAN based Models": systems.md section 2.

Variants:
- ``:a`` (Train A): pix2pix unet_256 + PatchGAN on the 3-channel masked face; BCE-with-logits
  adversarial loss + L1 weight 200; D loss halved; Adam 2e-4 (betas 0.5, 0.999: the paper
  names Adam only, pix2pix values); batch 10; 50k iterations at a constant rate (the paper
  gives no schedule); 256x256 LFW faces masked MaskTheFace-style.
- ``:b`` (Train B): as A with a 4-channel input (image + binary mask map); D sees 7 channels.
- ``:a_quick`` / ``:b_quick``: the same systems at 64x64 for a ~3-minute CPU run.
Data: the paper's data set is LFW; the default source here is the embedded synthetic one.
Use LFW with --config.data.source=lfw --config.data.data_dir=PATH/lfw
(--config.data.source_options.landmarks=dlib for detected landmarks).
Train C (customised U-Net) lands with the next models issue.
"""
from configs import default


def get_config(variant: str = "a"):
    c = default.get_config()
    parts = variant.split("_") if variant else ["a"]
    train, quick = parts[0], parts[1:] == ["quick"]
    if train not in ("a", "b") or (len(parts) > 1 and not quick):
        raise ValueError(f"configs/ye.py: unknown variant {variant!r}; choose a, b, a_quick, b_quick")
    c.name = f"ye_{train}"
    c.loss.terms.l1.weight = 200.0
    c.loss.d_scale = 0.5
    c.train.batch_size = 10
    default.constant_schedule_for_steps(c, 50_000)  # 50k iterations, no decay given
    if train == "b":
        c.model.generator_inputs = ("masked", "mask")
    if quick:
        c = default.quick(c)
        c.name += "_quick"
    return c
