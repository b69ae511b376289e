"""One protocol for every system: the runs of ``benchmarks/reproduce.py`` (docs/results.md).

``--config=configs/reproduce.py:SYSTEM,SCALE,DATA`` -- for example ``ye_c,cpu,celeba``:

- SYSTEM (:data:`SYSTEMS`): the entries the config files declare (``REPRODUCE`` in each
  file, with their report labels and their papers' ``CLAIMS``): ``pix2pix``, ``ye_a``,
  ``ye_b``, ``ye_c``, ``tf_tutorial`` (configs/masked_gan.py), ``ganmasker_seg`` (stage 1,
  M-Seg), ``ganmasker`` (stage 2, FU-Net; evaluated two-stage with
  ``--config.model.segmenter_workdir=<the ganmasker_seg run>``), ``ganmasker_one_stage``,
  ``unveilify``.
- SCALE (:data:`SCALES`):

  * ``smoke``: minutes for all of them; checks that every system trains and evaluates.
  * ``cpu``: one common setting that trains every system on 2 CPU cores in at most about 20
    minutes (UnVeilify, the slowest, sets the budget; the pix2pix family takes 6-8): each
    system's ``:quick`` widths (its losses, inputs and layer types kept), 64x64 (at 128x128
    UnVeilify and GANMasker's stage 2 would fit only a few hundred steps in that time),
    batch 8, 600 steps (4,800 images, about one CelebA-subset epoch), every step schedule of
    the ``:quick`` config stretched to 600 steps, the ``:quick`` learning rates.
  * ``full``: each paper's own config (resolution, widths, batch, schedule) unchanged.

- DATA: ``synthetic`` (embedded faces), ``celeba`` (official partition: train /
  validation), ``lfw`` (people split, ``test``); the folder by ``--config.data.data_dir``.

What every run shares, at every scale: the data, the split, the synthesised masks (the
default ``data.mask`` settings, the fixed eval-set seed), the eval images (every system gets
the identity image, so every eval set is drawn from the same records -- people with two
images or more -- and every system is scored on ``id_sim_reference`` too), the metrics
(LPIPS AlexNet, ID-sim dlib) and the first ``eval.num_sample_images`` images kept for
``samples.png``. At ``smoke`` and ``cpu`` also the resolution, batch size and step budget.
What stays each system's own: networks, losses, optimiser and learning rate, training
augmentation.
"""
from __future__ import annotations

import importlib
import pkgutil

from ml_collections import config_dict


def _declared() -> tuple[dict[str, dict], tuple[dict, ...]]:
    """Every config file's ``REPRODUCE`` entries (with ``module``: the file) in ``row`` order,
    and their ``CLAIMS`` in the order of their first entry's row."""
    import configs
    entries, claims = {}, []
    for info in sorted(pkgutil.iter_modules(configs.__path__), key=lambda m: m.name):
        if info.name in ("reproduce", "default"):
            continue
        mod = importlib.import_module(f"configs.{info.name}")
        for name, entry in getattr(mod, "REPRODUCE", {}).items():
            if name in entries:
                raise ValueError(f"configs/{info.name}.py: reproduction entry {name!r} is "
                                 f"also declared in configs/{entries[name]['module']}.py")
            entries[name] = {"module": info.name, **entry}
        claims += list(getattr(mod, "CLAIMS", ()))
    entries = dict(sorted(entries.items(), key=lambda kv: kv[1]["row"]))
    order = list(entries)
    claims.sort(key=lambda c: order.index(c["entry"]))
    return entries, tuple(claims)


#: name -> its declaration (the ``REPRODUCE`` dicts of the config files, plus ``module``).
ENTRIES, CLAIMS = _declared()
#: name -> (config module, the paper's variant, the small-widths variant).
SYSTEMS: dict[str, tuple[str, str, str]] = {
    name: (e["module"], e["paper"], e["small"]) for name, e in ENTRIES.items()}

#: Scales with one common setting: resolution, batch, steps, eval images, logging and
#: checkpoint intervals. ``full`` keeps each paper's config.
SCALES: dict[str, dict[str, int]] = {
    "smoke": dict(resolution=64, batch_size=4, num_steps=4, eval_images=8, log_every=2,
                  checkpoint_every=4),
    "cpu": dict(resolution=64, batch_size=8, num_steps=600, eval_images=512, log_every=50,
                checkpoint_every=200),
}
ALL_SCALES = (*SCALES, "full")

#: data name -> (source, eval split).
DATA = {"synthetic": ("synthetic", "test"), "celeba": ("celeba", "validation"),
        "lfw": ("lfw", "test")}

#: Step-valued schedule keys stretched with the step budget (also per network).
_STEP_KEYS = ("constant_steps", "decay_steps", "warmup_steps", "restart_period_steps")

EVAL_SAMPLES = 8


def parse(variant: str) -> tuple[str, str, str]:
    """``SYSTEM,SCALE,DATA`` -> (system, scale, data); ValueError naming the choices."""
    parts = [p.strip() for p in (variant or "").split(",")]
    if len(parts) != 3:
        raise ValueError(f"configs/reproduce.py: variant {variant!r} is not SYSTEM,SCALE,DATA "
                         f"(e.g. ye_c,cpu,celeba)")
    system, scale, data = parts
    for value, choices, what in ((system, SYSTEMS, "system"), (scale, ALL_SCALES, "scale"),
                                 (data, DATA, "data")):
        if value not in choices:
            raise ValueError(f"configs/reproduce.py: unknown {what} {value!r}; choose one of "
                             f"{', '.join(choices)}")
    return system, scale, data


def base_config(system: str, scale: str) -> config_dict.ConfigDict:
    """The system's own config: the paper's (``full``) or its small-widths variant."""
    module, paper, small = SYSTEMS[system]
    mod = importlib.import_module(f"configs.{module}")
    return mod.get_config(paper if scale == "full" else small)


def stretch_schedule(optim: config_dict.ConfigDict, factor: float) -> None:
    """Multiplies every step-valued schedule key (and the per-network overrides) by factor."""
    sections = [optim] + [optim.networks[n] for n in optim.get("networks", {})]
    for section in sections:
        for key in _STEP_KEYS:
            if section.get(key) is not None:
                section[key] = max(1, int(round(section[key] * factor)))
        if section.get("boundaries_steps"):
            section.boundaries_steps = tuple(max(1, int(round(b * factor)))
                                             for b in section.boundaries_steps)


def get_config(variant: str = "pix2pix,smoke,synthetic") -> config_dict.ConfigDict:
    system, scale, data = parse(variant)
    c = base_config(system, scale)
    c.name = f"{system}-{scale}-{data}"
    source, eval_split = DATA[data]
    c.data.source = source
    c.data.eval_split = eval_split
    c.data.identity_image = True
    if data != "synthetic":
        c.data.source_options.num_records = None   # every record of the split
    c.eval.num_sample_images = EVAL_SAMPLES
    c.eval.lpips_net = "alex"
    c.eval.id_backbone = "dlib"
    if scale == "full":
        return c
    s = SCALES[scale]
    c.data.resolution = s["resolution"]
    for key in c.model:  # a network built for one resolution (UnVeilify's generator)
        if key.endswith("_kwargs") and "resolution" in c.model[key]:
            c.model[key].resolution = s["resolution"]
    c.train.batch_size = s["batch_size"]
    stretch_schedule(c.optim, s["num_steps"] / c.train.num_steps)
    c.train.num_epochs = None
    c.train.num_steps = s["num_steps"]
    c.train.log_every_steps = s["log_every"]
    c.train.sample_every_steps = s["num_steps"]
    c.train.checkpoint_every_steps = s["checkpoint_every"]
    c.train.eval_every_steps = s["num_steps"]
    if "early_stopping" in c.train:
        c.train.early_stopping.metric = None
    c.eval.num_images = s["eval_images"]
    c.eval.batch_size = min(16, s["eval_images"])
    return c
