"""``python -m unmask_jax.demo``: flags -> models -> the page.

    python -m unmask_jax.demo [--weights=DIR ...] [--workdir=RUN ... --config=CFG]
        [--config.predict.<key>=<value> ...] [--host=127.0.0.1] [--port=7860]
        [--max_pixels=40000000] [--max_file_size=20mb]

``--weights`` and ``--workdir`` may be repeated: the page offers every model given (weights
folders first), or the starter weights when none is. ``--config`` is required with
``--workdir``, as for ``--mode=predict``, and applies to every run; its ``predict`` section
(e.g. ``--config.predict.faces=largest``) applies to every model. The server listens on
127.0.0.1 (this computer only) unless ``--host`` says otherwise.
"""
from __future__ import annotations

import logging
import signal
import sys

from absl import flags
from ml_collections import config_flags

from unmask_jax.exits import fail
from unmask_jax.main import DEFAULT_CONFIG, STARTER_WEIGHTS, user_error_types

#: The demo's own flags (``unmask_jax.main``'s are defined on absl's global FLAGS).
FLAGS = flags.FlagValues()
_WEIGHTS = flags.DEFINE_multi_string(
    "weights", [], "A weights folder (what --mode=export writes); repeat for several. With "
    "neither --weights nor --workdir: the starter weights.", flag_values=FLAGS)
_WORKDIR = flags.DEFINE_multi_string(
    "workdir", [], "A training run's folder; repeat for several (needs --config).",
    flag_values=FLAGS)
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Config file of the runs (--workdir); its predict section "
    "applies to every model.", flag_values=FLAGS, lock_config=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every "
                            "network interface; the page has no login).", flag_values=FLAGS)
_PORT = flags.DEFINE_integer("port", 7860, "Port to listen on.", flag_values=FLAGS)
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", 40_000_000, "Larger photos are refused before decoding "
    "(config.predict.max_pixels of every model).", flag_values=FLAGS)
_MAX_FILE_SIZE = flags.DEFINE_string("max_file_size", "20mb", "Largest upload.",
                                     flag_values=FLAGS)
USAGE = ("Usage: python -m unmask_jax.demo [--weights=DIR ...] [--workdir=RUN ... "
         "--config=CFG] [--host=127.0.0.1] [--port=7860]")


def parse(argv: list[str]) -> None:
    """Parses ``argv`` into FLAGS; a mistake prints one message and exits with status 2."""
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        print(__doc__ + "\n" + FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        rest = FLAGS(argv)
        FLAGS["config"].value.to_dict()  # the config file loads lazily: fail here
    except flags.Error as e:
        fail(f"{e}\n{USAGE}")
    except (AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError,
            ImportError) as e:
        fail(f"--config: {type(e).__name__}: {e}\n{USAGE}")
    if len(rest) > 1:
        fail(f"unexpected arguments: {rest[1:]}\n{USAGE}")
    if _WORKDIR.value and not FLAGS["config"].present:
        fail(f"--workdir needs --config (the config the runs were trained with)\n{USAGE}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parse(argv)
    from unmask_jax import platforms
    from unmask_jax.predict import PredictSetupError
    platforms.enable_compilation_cache()
    weights, workdirs = list(_WEIGHTS.value), list(_WORKDIR.value)
    if not weights and not workdirs:
        weights = [STARTER_WEIGHTS]
    try:
        from unmask_jax.demo import app
    except ImportError as e:
        fail(f"{e}: the demo needs Gradio: pip install -e \".[demo]\"")
    from unmask_jax.demo import models
    try:
        loaded = models.load_models(weights, workdirs, _CONFIG.value, _MAX_PIXELS.value)
    except (PredictSetupError, ValueError, TypeError, KeyError) + user_error_types() as e:
        fail(str(e))
    out = app.OutputFolder()
    # A plain ``kill`` ends the server like Ctrl-C: the result folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        blocks = app.build(loaded, out)
        print(f"demo: {len(loaded)} model(s): {', '.join(m.label for m in loaded)}",
              flush=True)
        app.launch(blocks, host=_HOST.value, port=_PORT.value,
                   max_file_size=_MAX_FILE_SIZE.value)
    except OSError as e:  # e.g. the port is taken
        fail(f"cannot serve on {_HOST.value}:{_PORT.value}: {e}")
    finally:
        out.remove()


if __name__ == "__main__":
    main(sys.argv)
