"""The System interface: registry, loss terms from config, the TF-tutorial step order, and the
module layering (nothing below the trainer imports it)."""
import ast
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_train import random_batch, tiny_config
from unmask_jax import loss_terms, losses, state as state_lib, systems
from unmask_jax.systems import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FEATURE_TERMS = {
    "gan": {"weight": 1.0, "kind": "lsgan"},
    "l1": {"weight": 10.0},
    "perceptual": {"weight": 1.0, "backbone": "vgg16", "layers": ("relu1_2", "relu2_2"),
                   "layer_weights": (1.0, 1.0)},
    "lpips": {"weight": 1.0, "net": "vgg16"},
    "identity": {"weight": 0.5, "backbone": "dlib"},
}


def _feature_config():
    c = tiny_config()
    c.loss.terms = FEATURE_TERMS
    return c


def test_registry_and_unknown_system():
    assert isinstance(systems.build(tiny_config()), systems.SYSTEMS["pix2pix"])
    c = tiny_config()
    c.system = "nope"
    with pytest.raises(ValueError, match="config.system='nope'"):
        systems.build(c)


def test_backend_forms_and_cpu_library():
    """``config.model.backend_forms`` (auto | off) reaches every program a system compiles;
    the XLA CPU library is the system's own statement (GANMasker: Eigen), never a model's;
    runs recorded with the older ``model.cpu_convolutions`` or without ``backend_forms``
    resume (the key changes no network)."""
    from configs import ganmasker
    from unmask_jax import checkpoints, parallel, programs

    system = systems.build(tiny_config())
    assert (system.backend_forms, system.cpu_library) == ("auto", "ynnpack")
    for variant in ("seg_quick", "unmask_quick"):
        assert systems.build(ganmasker.get_config(variant)).cpu_library == "eigen"
    off = tiny_config()
    off.model.backend_forms = "off"
    assert systems.build(off).backend_forms == "off"
    bad = tiny_config()
    bad.model.backend_forms = "fast"
    with pytest.raises(ValueError, match="config.model.backend_forms"):
        systems.build(bad)
    system = systems.build(ganmasker.get_config("unmask_quick"))
    mesh = parallel.make_data_mesh()
    step = programs.make_train_step(system, system.optimizers(1), mesh,
                                    parallel.replicated_sharding(mesh))
    assert (step.target.platform, step.target.cpu_library) == (jax.default_backend(), "eigen")
    assert step.compiler_options == ({"xla_cpu_experimental_ynn_fusion_type":
                                      "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                                      "LIBRARY_FUSION_TYPE_REDUCE"}
                                     if jax.default_backend() == "cpu" else {})
    current = ganmasker.get_config("unmask_quick")
    recorded = json.loads(json.dumps(checkpoints.config_to_json(current)))
    del recorded["model"]["backend_forms"]
    recorded["model"]["cpu_convolutions"] = "eigen"  # what today's main recorded
    unsafe, safe = checkpoints.compare_configs(recorded, current)
    assert unsafe == [] and safe == []  # a removed key (checkpoints.REMOVED_KEYS)
    recorded["model"]["backend_forms"] = "off"
    unsafe, safe = checkpoints.compare_configs(recorded, current)
    assert unsafe == [] and [k for k, _, _ in safe] == ["model.backend_forms"]


def test_loss_term_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"terms.l2: unknown term type 'l2'"):
        loss_terms.parse_terms({"l2": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"terms.l1 \(l1\): unknown option\(s\) \['beta'\]"):
        loss_terms.parse_terms({"l1": {"weight": 1.0, "beta": 2}})
    with pytest.raises(ValueError, match="terms.lpips.*alex or vgg16"):
        loss_terms.parse_terms({"lpips": {"weight": 1.0, "net": "squeeze"}})
    with pytest.raises(ValueError, match="perceptual.*layers"):
        loss_terms.parse_terms({"perceptual": {"weight": 1.0, "layers": ("relu9_9",),
                                               "layer_weights": (1.0,)}})
    # A second term of one type, and a zero weight that removes a term.
    terms = loss_terms.parse_terms({"l1_mask": {"type": "l1", "weight": 2.0, "pred": "raw"},
                                    "mse": {"weight": 0.0},
                                    "gan": {"weight": 1.0}})
    assert [(t.name, t.type, t.pred) for t in terms] == [("gan", "gan", "fake_logits"),
                                                         ("l1_mask", "l1", "raw")]


def test_pixel_and_mask_losses_known_values():
    p = jnp.asarray([[0.5, 1.0], [0.0, 0.25]])[None, ..., None]
    t = jnp.asarray([[1.0, 1.0], [0.0, 0.0]])[None, ..., None]
    # Dice: 2 * 1.5 + 1 over (1.75 + 2 + 1).
    assert float(losses.dice_loss(p, t)) == pytest.approx(1 - 4.0 / 4.75)
    bce = -(np.log(0.5) + np.log(1.0) + np.log(1.0) + np.log(0.75)) / 4
    assert float(losses.bce_loss(p, t)) == pytest.approx(bce, rel=1e-6)
    logits = jnp.asarray([0.3, -1.2])
    assert float(losses.bce_loss(logits, jnp.asarray([1.0, 0.0]), from_logits=True)) == \
        pytest.approx(float(losses.bce_loss(jax.nn.sigmoid(logits), jnp.asarray([1.0, 0.0]))),
                      rel=1e-5)


@pytest.mark.slow
def test_feature_loss_terms_train_reach_the_generator_and_are_logged():
    """perceptual + lpips + identity + l1 (+ gan) named in the config: two training steps run,
    every term is logged, and every term alone has a non-zero gradient in the generator."""
    config = _feature_config()
    system = systems.build(config)
    txs = system.optimizers(10)
    frozen = system.load_frozen()
    assert set(frozen["loss"]) == {"perceptual", "lpips", "identity"}
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, 64))()
    step = jax.jit(lambda s, b, f: system.train_step(s, b, f, txs))
    for i in range(2):
        state, m = step(state, random_batch(seed=i), frozen)
        assert float(m["nonfinite"]) == 0.0
        for name in FEATURE_TERMS:
            assert np.isfinite(float(m[f"g_{name}"])) and float(m[f"g_{name}"]) > 0, name
    assert int(state.step) == 2

    # Each term alone: the Jacobian of the vector of term values w.r.t. G's parameters (one
    # compiled backward per term), every row non-zero.
    batch = random_batch(seed=5)
    gen = state.nets["generator"]
    names = [n for n in FEATURE_TERMS if n != "gan"]

    def term_values(params):
        out = system.G.apply({"params": params, **gen.collections}, batch["masked"],
                             train=False)
        _, values = system.objective(frozen["loss"], {
            "output": out, "target": batch["target"], "fake_logits": jnp.zeros((4, 6, 6, 1))})
        return jnp.stack([values[f"g_{n}"] for n in names])

    jac = jax.jit(jax.jacrev(term_values))(gen.params)
    norms = np.sqrt(sum(np.sum(np.square(np.asarray(leaf)).reshape(len(names), -1), axis=1)
                        for leaf in jax.tree.leaves(jac)))
    for name, norm in zip(names, norms):
        assert np.isfinite(norm) and norm > 0, (name, norm)


def test_frozen_variables_are_arguments_not_constants():
    """The loss networks' weights enter the compiled step as parameters: the lowered step's
    text holds no large constant, and its inputs include every frozen leaf."""
    config = _feature_config()
    config.loss.terms = {k: v for k, v in FEATURE_TERMS.items() if k in ("gan", "l1", "lpips")}
    system = systems.build(config)
    txs = system.optimizers(10)
    frozen = system.load_frozen()
    state = jax.eval_shape(lambda: state_lib.create_state(system, txs, 0, 64))
    lowered = jax.jit(lambda s, b, f: system.train_step(s, b, f, txs)).lower(
        state, random_batch(), frozen)
    n_frozen = len(jax.tree.leaves(frozen))
    assert n_frozen > 10
    args = lowered.in_tree.num_leaves if hasattr(lowered, "in_tree") else None
    if args is not None:
        assert args >= len(jax.tree.leaves(state)) + n_frozen
    text = lowered.as_text()
    # A baked-in VGG would appear as dense<...> constants of hundreds of thousands of values.
    assert len(text) < 5_000_000


def _tf_reference_step(system, state, batch, tx):
    """The TF tutorial's train_step written out by hand: G forward once; D on the real pair,
    then on the generated one; both gradients against the pre-update D; D loss real + fake;
    G loss gan + 100 * l1; both Adam updates applied."""
    gen, disc = state.nets["generator"], state.nets["discriminator"]
    rng = jax.random.fold_in(state.rng, state.step)
    x, y = batch["masked"], batch["target"]

    def G(params):
        return system.G.apply({"params": params, **gen.collections}, x, train=True,
                              rngs={"dropout": rng}, mutable=["batch_stats"])

    def D(params, cols, image):
        return system.D.apply({"params": params, **cols}, jnp.concatenate([x, image], -1),
                              train=True, mutable=["batch_stats"])

    def g_loss(gp):
        fake, _ = G(gp)
        _, cols = D(disc.params, disc.collections, y)           # real first (BN order)
        logits, _ = D(disc.params, cols, fake)
        return losses.gan_loss(logits, True) + 100.0 * jnp.mean(jnp.abs(fake - y))

    def d_loss(dp):
        fake, _ = G(gen.params)
        real_logits, cols = D(dp, disc.collections, y)
        fake_logits, _ = D(dp, cols, jax.lax.stop_gradient(fake))
        return losses.gan_loss(real_logits, True) + losses.gan_loss(fake_logits, False)

    g_grads = jax.grad(g_loss)(gen.params)
    d_grads = jax.grad(d_loss)(disc.params)
    _, g_cols = G(gen.params)
    _, cols = D(disc.params, disc.collections, y)
    _, d_cols = D(disc.params, cols, G(gen.params)[0])
    out = {}
    for name, net, g, cols in (("generator", gen, g_grads, g_cols),
                               ("discriminator", disc, d_grads, d_cols)):
        upd, _ = tx.update(g, net.opt_state, net.params)
        out[name] = (optax.apply_updates(net.params, upd), cols)
    return out


@pytest.mark.slow
def test_tf_tutorial_step_order_against_a_hand_written_reference():
    from configs import masked_gan
    c = masked_gan.get_config("quick")
    c.model.generator_kwargs = {"num_downs": 4, "ngf": 4}
    c.model.discriminator_kwargs = {"ndf": 4}
    c.optim.schedule = "constant"
    assert c.loss.update_order == "simultaneous" and c.loss.d_scale == 1.0
    system = systems.build(c)
    tx = optax.adam(1e-3, b1=0.5)
    txs = {"generator": tx, "discriminator": tx}
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, 64))()
    batch = random_batch(2)
    ref = jax.jit(lambda s, b: _tf_reference_step(system, s, b, tx))(state, batch)
    new, m = jax.jit(lambda s, b: system.train_step(s, b, {"loss": {}}, txs))(state, batch)
    for name in ("generator", "discriminator"):
        params, cols = ref[name]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                     params, new.nets[name].params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     cols, new.nets[name].collections)
    # The PyTorch sequential order gives other generator parameters (so this test can fail).
    c.loss.update_order = "sequential"
    seq = systems.build(c)
    other, _ = jax.jit(lambda s, b: seq.train_step(s, b, {"loss": {}}, txs))(state, batch)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(other.nets["generator"].params),
        jax.tree.leaves(new.nets["generator"].params))]
    assert max(diffs) > 1e-5


def _imports_of(path):
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.slow
def test_nothing_below_the_trainer_imports_it():
    """Statically: no module of unmask_jax except main.py imports unmask_jax.train (train.py
    is the trainer itself). At run time: evaluation, export, state and systems load without
    it."""
    offenders = []
    for root, _, files in os.walk(os.path.join(REPO, "unmask_jax")):
        for f in files:
            path = os.path.join(root, f)
            rel = os.path.relpath(path, REPO)
            if not f.endswith(".py") or rel in ("unmask_jax/train.py", "unmask_jax/main.py"):
                continue
            if "unmask_jax.train" in _imports_of(path):
                offenders.append(rel)
    assert offenders == []
    code = ("import sys; import unmask_jax.evaluate, unmask_jax.export.checkpoint, "
            "unmask_jax.state, unmask_jax.systems, unmask_jax.checkpoints; "
            "assert 'unmask_jax.train' not in sys.modules; print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_commit_if_finite_keeps_every_network():
    tx = optax.sgd(1.0)
    nets = {"a": state_lib.NetState({"w": jnp.ones(3)}, {"s": {"m": jnp.zeros(3)}},
                                    tx.init({"w": jnp.ones(3)})),
            "b": state_lib.NetState({"w": jnp.ones(2)}, {}, tx.init({"w": jnp.ones(2)}))}
    grads = {"a": {"w": jnp.full(3, 0.5)}}
    updated = {"b": ({"w": jnp.zeros(2)}, nets["b"].opt_state)}
    cols = {"a": {"s": {"m": jnp.ones(3)}}}
    ok = base.commit_if_finite(jnp.asarray(True), nets, txs={"a": tx}, grads=grads,
                               updated=updated, collections=cols)
    np.testing.assert_array_equal(ok["a"].params["w"], 0.5)
    np.testing.assert_array_equal(ok["a"].collections["s"]["m"], 1.0)
    np.testing.assert_array_equal(ok["b"].params["w"], 0.0)
    bad = base.commit_if_finite(jnp.asarray(False), nets, txs={"a": tx}, grads=grads,
                                updated=updated, collections=cols)
    for n in nets:
        jax.tree.map(np.testing.assert_array_equal, bad[n], nets[n])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pix2pix", "ganmasker_unmask"])
def test_backend_forms_change_no_number(variant):
    """One train step with the CPU forms (``model.backend_forms=auto``, the system's XLA CPU
    library) and with plain XLA ops (``off``) on the same state and batch: per tensor,
    max|diff| / max|ref| <= 1e-5 for the losses and <= 1e-4 for the updated parameters
    (SGD: the update is the gradient), BN statistics and every other state leaf."""
    from configs import ganmasker
    from unmask_jax import parallel, programs

    if variant == "pix2pix":
        config = tiny_config()
    else:
        config = ganmasker.get_config("unmask_quick")
        config.model.generator_kwargs.base_width = 4
        config.model.discriminator_kwargs.ndf = 8
        config.loss.terms.perceptual.weight = 0.0  # no frozen VGG: seconds, not minutes
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    rep = parallel.replicated_sharding(mesh)
    batch = {k: jnp.asarray(v) for k, v in random_batch(4, config.data.resolution).items()}
    batch.update(index=jnp.arange(4), identity_id=jnp.arange(4))
    results = {}
    for forms in ("auto", "off"):
        c = config.copy_and_resolve_references()
        c.model.backend_forms = forms
        system = systems.build(c)
        txs = {name: optax.sgd(0.1) for name in system.networks}
        state = jax.jit(lambda: state_lib.create_state(system, txs, 0, c.data.resolution))()
        step = programs.make_train_step(system, txs, mesh, rep)
        results[forms] = jax.device_get(step(state, batch, system.load_frozen()))
    (auto_state, auto_m), (off_state, off_m) = results["auto"], results["off"]
    for key in auto_m:
        ref = float(off_m[key])
        assert abs(float(auto_m[key]) - ref) <= 1e-5 * max(abs(ref), 1e-6), key
    leaves_auto, leaves_off = jax.tree.leaves(auto_state), jax.tree.leaves(off_state)
    assert len(leaves_auto) == len(leaves_off) > 20
    rel = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
           for a, b in zip(leaves_auto, leaves_off) if np.size(a)]
    assert max(rel) <= 1e-4, max(rel)


@pytest.mark.parametrize("order", ["sequential", "simultaneous"])
def test_remat_changes_no_number_and_marks_what_the_backward_pass_recomputes(order):
    """``train.remat``: one G/D step equals the step without it (losses to 1e-5, every
    state leaf to 1e-4 of its scale), and its program fences each network call's forward
    pass for recomputation (``jax.checkpoint``: optimisation barriers), which the program
    without it has none of. What it saves is the compiled TPU program's to say (GANMasker
    at 512 x 512, 8 per chip on v5e: 8.76 -> 6.29 GiB; docs/scale.md); small steps like
    this one can need more."""
    from unmask_jax import parallel, programs

    mesh = parallel.make_data_mesh(jax.devices()[:1])
    rep = parallel.replicated_sharding(mesh)
    batch = {k: jnp.asarray(v) for k, v in random_batch(4, 64).items()}
    results, barriers = {}, {}
    for remat in (True, False):
        config = tiny_config(**{"loss.update_order": order, "train.remat": remat})
        system = systems.build(config)
        txs = {name: optax.sgd(0.1) for name in system.networks}
        state = jax.jit(lambda: state_lib.create_state(system, txs, 0, 64))()
        step = programs.make_train_step(system, txs, mesh, rep)
        frozen = system.load_frozen()
        barriers[remat] = step.lower(state, batch, frozen).as_text().count(
            "optimization_barrier")
        results[remat] = jax.device_get(step(state, batch, frozen))
    (on_state, on_m), (off_state, off_m) = results[True], results[False]
    for key in off_m:
        ref = float(off_m[key])
        assert abs(float(on_m[key]) - ref) <= 1e-5 * max(abs(ref), 1e-6), key
    rel = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
           for a, b in zip(jax.tree.leaves(on_state), jax.tree.leaves(off_state)) if np.size(a)]
    assert len(rel) > 20 and max(rel) <= 1e-4, max(rel)
    assert barriers[False] == 0 and barriers[True] >= 3, barriers
