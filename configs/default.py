"""What every system shares: data, the training loop, optimiser defaults, evaluation,
prediction, distributed start-up; on synthetic faces.

Each system's config file builds on ``get_config()`` and adds its own networks and losses
(``model.*``, ``loss.*``, ``optim.networks.<network>``): the pix2pix family's in
``configs/pix2pix.py`` (``family``), GANMasker's and UnVeilify's in theirs. Every choice is a
visible key; ``python -m unmask_jax.main --config=configs/X.py --mode=summary``
prints the resolved config and the parameter counts.
"""
from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "default"
    c.system = config_dict.placeholder(str)  # unmask_jax.systems registry: set by each config
    c.seed = 0

    # ---- data: data_pipelines.config.DataConfig, whose defaults are the only copy ----
    # Keys: source (synthetic | lfw | celeba | folder | paired), data_dir, source_options.*
    # (every option of every source, None = unset; see data_pipelines/sources), train_split,
    # eval_split, resolution, framing, face_scale, jitter_scale, flip, mask.* (masks.
    # MaskSynthesisConfig fields), identity_image, num_workers, worker_buffer_size,
    # read_threads, shuffle, seed. `--mode=summary` prints the resolved values.
    c.data = data_section()

    # ---- networks (unmask_jax.models registry): each system's config adds its own ----
    c.model = config_dict.ConfigDict()
    # A finished mask-segmentation run (GANMasker stage 1, M-Seg): the mask maps for systems
    # that take one (GANMasker stage 2 evaluation and prediction; --mode=predict of any
    # system whose generator input has "mask", and the paste-back region of the others).
    c.model.segmenter_workdir = config_dict.placeholder(str)
    # Backend forms (unmask_jax/backends): "auto" runs, on the platform a program is compiled
    # for, the other forms of the same maths measured faster there (on the CPU: GEMM and
    # pre-padded convolutions, sub-pixel transposed convolutions, ...; the XLA CPU library a
    # system prefers); "off" runs plain XLA ops everywhere. The numbers are the same up to
    # float rounding.
    c.model.backend_forms = "auto"

    # ---- losses (unmask_jax.loss_terms registry): each system's config adds its own ----
    c.loss = config_dict.ConfigDict()

    # ---- optimisation (unmask_jax.optim) ----
    c.optim = config_dict.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    # constant | linear_decay (pix2pix: constant, then linear towards 0) | step (multiply by
    # factor at boundaries) | warmup_cosine_restarts (linear warm-up, then cosine annealing
    # with warm restarts T_0 = restart_period, T_mult = restart_mult). Durations in steps or
    # epochs: exactly one of each pair is set; epochs make the rate change once per epoch.
    c.optim.schedule = "linear_decay"
    c.optim.constant_epochs = 100
    c.optim.constant_steps = config_dict.placeholder(int)
    c.optim.decay_epochs = 100
    c.optim.decay_steps = config_dict.placeholder(int)
    c.optim.boundaries_steps = ()
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = config_dict.placeholder(float)
    c.optim.warmup_steps = config_dict.placeholder(int)
    c.optim.restart_period_epochs = config_dict.placeholder(float)
    c.optim.restart_period_steps = config_dict.placeholder(int)
    c.optim.restart_mult = 1.0
    c.optim.warmup_shape = "linear"       # linear | exp10 (UnVeilify: lr * 10**(u - warmup))
    c.optim.min_lr = 0.0
    # Per-network overrides of the keys above (None keeps the default), one section per
    # trained network, added by each system's config (network_optim_overrides), e.g.
    # --config.optim.networks.discriminator.lr=1e-4.
    c.optim.networks = config_dict.ConfigDict()

    # ---- training loop (unmask_jax.train) ----
    c.train = config_dict.ConfigDict()
    c.train.batch_size = 1                # global batch, split over processes and devices
    c.train.num_epochs = 200              # or num_steps; exactly one is set
    c.train.num_steps = config_dict.placeholder(int)
    c.train.compute_dtype = "float32"     # float32 | bfloat16 (params stay float32)
    # How the state lies on the data-parallel devices: replicated | optimizer (each device
    # holds 1/N of the optimizer state, ZeRO-1) | full (parameters split too, FSDP). On TPU
    # v5e the split layouts save memory but add traffic (docs/scale.md, "Efficiency").
    c.train.state_sharding = "replicated"
    # Rematerialisation (G/D systems): G, D and G's objective keep only their convolutions'
    # outputs for the backward pass and recompute the rest there. The same numbers, more
    # time, and what memory the compiler's schedule saves (docs/scale.md, "Efficiency").
    c.train.remat = False
    c.train.log_every_steps = 100
    c.train.sample_every_steps = 1000
    c.train.checkpoint_every_steps = 5000
    c.train.eval_every_steps = 10000
    c.train.max_checkpoints_to_keep = 3
    c.train.num_samples = 8               # images in the sample grid
    c.train.stop_after_steps = config_dict.placeholder(int)  # end this run early (resumable)
    # Stop when eval metric `metric` (a key of the eval JSON, nested with "/"; None = off) has
    # not improved (mode max | min, by more than min_delta) for `patience` evaluations.
    c.train.early_stopping = config_dict.ConfigDict(dict(
        metric=config_dict.placeholder(str), mode="max", patience=10, min_delta=0.0))

    # ---- evaluation (unmask_jax.evaluate) ----
    c.eval = config_dict.ConfigDict()
    # How the generator runs at evaluation and prediction: per_image (the pix2pix family's
    # reference: pix2pix test.py without --eval at batch 1, the TF tutorial's
    # generator(x, training=True): BatchNorm on each image's own statistics, dropout on with a
    # fixed per-image key) | running (model.eval(): running statistics, no dropout).
    c.eval.bn_statistics = "per_image"
    c.eval.num_images = 100
    c.eval.batch_size = 8
    c.eval.checkpoint_step = config_dict.placeholder(int)  # evaluate mode: default latest
    # The first N evaluated images (masked, target, output, raw, maps) are kept in
    # eval/step_N.samples.npz and eval/latest.samples.npz (benchmarks/reproduce.py's
    # samples.png); 0 = none.
    c.eval.num_sample_images = 8
    c.eval.lpips_net = "alex"             # LPIPS v0.1 backbone (alex | vgg16); "" = off
    # Identity similarity backbone: dlib (real weights ship offline) | arcface_iresnet50 |
    # arcface_iresnet100 | irse50 (these need eval.id_weights, see unmask_jax.features).
    c.eval.id_backbone = "dlib"
    c.eval.id_weights = config_dict.placeholder(str)
    # FID (unmask_jax.features.fid): the FID Inception weights, pytorch-fid's
    # pt_inception-2015-12-05-6726825d.pth as the user brings it or converted with
    # `python -m unmask_jax.features convert --kind=fid_inception`. Unset = no FID.
    c.eval.fid_weights = config_dict.placeholder(str)

    # ---- prediction on photos (--mode=predict; unmask_jax.predict) ----
    c.predict = config_dict.ConfigDict()
    c.predict.faces = "all"               # all: every face dlib finds | largest: one per image
    c.predict.batch_size = 8              # faces per model call (batched across images)
    c.predict.side_by_side = False        # also write <name>_side_by_side.<ext> (input | output)
    # Mask maps drawn by the user (white = mask): one image for a single input, or a folder
    # mirroring --input (same relative path, any image extension). Wins over a stage-1 run.
    c.predict.mask = config_dict.placeholder(str)
    # Identity photo of the same person (UnVeilify): one image, or a folder mirroring --input.
    c.predict.identity = config_dict.placeholder(str)
    # Paste-back: the mask region grown by `dilate` and its edge blurred over `feather`, both
    # as fractions of the face crop's side; pixels outside stay bit-identical.
    c.predict.dilate = 0.04
    c.predict.feather = 0.03
    c.predict.min_face = 32               # px: faces narrower are skipped (status too_small)
    c.predict.max_pixels = 100_000_000    # larger images are not decoded (status too_large)
    c.predict.detect_max_side = 1600      # px: larger images are downscaled for detection only
    c.predict.detect_upsample = True      # retry dlib on a 2x image when no face is found
    # Face detector: hog (dlib HOG) | cnn (dlib's MMOD CNN, slower) | hog+cnn (the CNN where
    # HOG finds no face: HOG misses many masked faces; benchmarks/masked_face_detection.py).
    c.predict.detector = "hog+cnn"
    # Which implementation runs that CNN: jax (dlib's network and weights ported to JAX:
    # same detections, ~10x faster on CPU) | dlib (dlib's own; its pip build has no BLAS).
    c.predict.cnn_backend = "jax"
    # An --output folder that already holds files is refused unless this is True (then files
    # of the same name are replaced).
    c.predict.overwrite = False
    # Also write faces/<input>.face<k>.{crop,map,unmasked,side_by_side}.png per face, at the
    # model's resolution.
    c.predict.save_faces = False

    # ---- distributed start-up ----
    # Keys and defaults are those of unmask_jax.parallel.DistributedConfig (their one home):
    # mode=auto (join a launcher / SLURM / Open MPI / TPU-pod run, else one process) | off |
    # explicit; coordinator_address, num_processes, process_id (explicit); timeouts in s.
    from unmask_jax.parallel import distributed_config_defaults
    c.distributed = distributed_config_defaults()
    return c


def data_section() -> config_dict.ConfigDict:
    """``config.data`` built from ``DataConfig.defaults()``: one home for the data defaults
    (DataConfig, which the data tools use without this file). Fields whose default is None
    and every source option become typed placeholders, so any of them can be set from the
    command line (``--config.data.source_options.landmarks=dlib``); unset (None) source
    options are not passed to the source."""
    from data_pipelines.config import OPTIONAL_FIELD_TYPES, DataConfig
    from data_pipelines.sources import OPTION_TYPES

    d = config_dict.ConfigDict()
    for key, value in DataConfig.defaults().items():
        if key == "source_options":
            d[key] = config_dict.ConfigDict(
                {k: config_dict.placeholder(t) for k, t in OPTION_TYPES.items()})
        elif key == "mask":
            d[key] = config_dict.ConfigDict()
        elif value is None:
            d[key] = config_dict.placeholder(OPTIONAL_FIELD_TYPES[key])
        else:
            d[key] = value
    return d


def variant(file: str, given: str | None, choices: tuple[str, ...], default: str = "") -> str:
    """The variant a config file was given (``--config=configs/<file>.py:<variant>``; an
    empty one is ``default``), checked against the file's ``choices``: every config file
    parses its variants here, with one message for an unknown one."""
    name = given or default
    if name not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"configs/{file}.py: unknown variant {given!r}; choose one of {shown}")
    return name


def network_optim_overrides() -> config_dict.ConfigDict:
    """``optim.networks.<name>``: every overridable optimiser key, unset (None)."""
    from unmask_jax.optim import OVERRIDABLE
    types = {"schedule": str, "boundaries_steps": tuple, "warmup_shape": str}
    return config_dict.ConfigDict({
        k: config_dict.placeholder(types.get(k, int if k.endswith("_steps") else float))
        for k in OVERRIDABLE})


def constant_schedule_for_steps(c: config_dict.ConfigDict, num_steps: int
                                ) -> config_dict.ConfigDict:
    """Trains for ``num_steps`` steps at a constant learning rate (papers that give
    iterations and no decay)."""
    c.train.num_epochs = None
    c.train.num_steps = num_steps
    c.optim.schedule = "constant"
    c.optim.constant_epochs = None
    c.optim.decay_epochs = None
    return c
