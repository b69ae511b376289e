"""Distributed start-up, the data-parallel mesh and global batches.

One module owns everything the trainer needs to run the same code on one CPU,
several GPUs or a multi-host TPU pod:

* :func:`initialize_distributed` starts the JAX distributed runtime (once, before
  any device access) in one of three modes:

  - ``off``: single process, nothing is started.
  - ``auto``: argument-less ``jax.distributed.initialize()``; JAX detects Cloud
    TPU pods, SLURM (``srun``) and Open MPI (``mpirun``) by itself.
  - ``explicit``: coordinator address, process count and process id come from
    the config or, where a field is ``None``, from the environment variables
    ``UNMASK_COORDINATOR`` (``host:port`` of process 0),
    ``UNMASK_NUM_PROCESSES`` and ``UNMASK_PROCESS_ID``
    (what ``launch/local_multiprocess.py`` sets for each child).

  Both timeouts (initialisation, heartbeat) are passed through to JAX: a process
  that dies makes the others abort after ``heartbeat_timeout_s`` instead of
  hanging in a collective.
* :func:`make_data_mesh`: one ``"data"`` axis over every device of every process.
* :func:`global_batch`: per-process local batches -> global ``jax.Array`` built
  with ``jax.make_array_from_process_local_data`` (global batch = per-process
  batch x process count).
* :func:`fetch_to_host`, :func:`sync_global`, :func:`is_main_process`: helpers
  for process-0-only output and collective barriers.
* :class:`PreemptionMonitor`: SIGTERM -> every process learns the same step at
  which to save a checkpoint and stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
MODES = ("off", "auto", "explicit")
ENV_COORDINATOR = "UNMASK_COORDINATOR"
ENV_NUM_PROCESSES = "UNMASK_NUM_PROCESSES"
ENV_PROCESS_ID = "UNMASK_PROCESS_ID"


@dataclasses.dataclass
class DistributedConfig:
    """How this process joins a multi-process run.

    Attributes:
      mode: ``off`` (single process), ``auto`` (TPU pod / SLURM / Open MPI
        auto-detection) or ``explicit`` (the three fields below, or the
        ``UNMASK_COORDINATOR`` / ``UNMASK_NUM_PROCESSES`` /
        ``UNMASK_PROCESS_ID`` environment variables where a field is ``None``).
      coordinator_address: ``host:port`` of process 0 (explicit mode).
      num_processes: total process count (explicit mode).
      process_id: this process' index in ``[0, num_processes)`` (explicit mode).
      initialization_timeout_s: how long processes wait for each other at start.
      heartbeat_timeout_s: after this long without a heartbeat a process is
        declared dead and every other process aborts (non-zero exit).
    """

    mode: str = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"distributed.mode must be one of {MODES}, got {self.mode!r}")
        if self.initialization_timeout_s <= 0 or self.heartbeat_timeout_s <= 0:
            raise ValueError(
                "distributed timeouts must be positive, got "
                f"initialization_timeout_s={self.initialization_timeout_s}, "
                f"heartbeat_timeout_s={self.heartbeat_timeout_s}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DistributedConfig:
        """Builds a config from a mapping (e.g. ``config.distributed``).

        Unknown keys are an error, so that a typo cannot silently fall back to a
        default.
        """
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown distributed config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from err


def resolve_explicit(cfg: DistributedConfig) -> tuple[str, int, int]:
    """(coordinator, process count, process id) for explicit mode.

    Config fields win; ``None`` fields are read from ``UNMASK_*`` env variables.
    """
    coordinator = cfg.coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = (cfg.num_processes if cfg.num_processes is not None
                     else _env_int(ENV_NUM_PROCESSES))
    process_id = cfg.process_id if cfg.process_id is not None else _env_int(ENV_PROCESS_ID)
    missing = [name for name, value in (
        (f"coordinator_address / {ENV_COORDINATOR}", coordinator),
        (f"num_processes / {ENV_NUM_PROCESSES}", num_processes),
        (f"process_id / {ENV_PROCESS_ID}", process_id)) if value is None]
    if missing:
        raise ValueError(
            "distributed.mode='explicit' needs " + ", ".join(missing)
            + " (set the config fields or the environment variables)")
    assert coordinator is not None and num_processes is not None and process_id is not None
    if ":" not in coordinator:
        raise ValueError(
            f"coordinator address must be host:port, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
            f"num_processes={num_processes}, process_id={process_id}")
    return coordinator, num_processes, process_id


def initialize_distributed(cfg: DistributedConfig) -> None:
    """Starts the JAX distributed runtime; call before any device access.

    Idempotent: a second call after a successful start only logs. In ``off``
    mode nothing is started. Raises ``RuntimeError`` (from JAX) if devices were
    already touched, and ``ValueError`` with a hint if ``auto`` finds no cluster.
    """
    if cfg.mode == "off":
        logger.info("distributed: mode=off (single process)")
        return
    if jax.distributed.is_initialized():
        logger.info("distributed: already initialised (process %d of %d)",
                    jax.process_index(), jax.process_count())
        return
    timeouts = dict(initialization_timeout=int(cfg.initialization_timeout_s),
                    heartbeat_timeout_seconds=int(cfg.heartbeat_timeout_s))
    if cfg.mode == "auto":
        try:
            jax.distributed.initialize(**timeouts)
        except ValueError as err:
            raise ValueError(
                "distributed.mode='auto' found no cluster environment (Cloud TPU "
                "pod, SLURM srun, Open MPI mpirun); use mode='off' for a single "
                f"process or mode='explicit' with a coordinator. JAX said: {err}") from err
    else:
        coordinator, num_processes, process_id = resolve_explicit(cfg)
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes,
            process_id=process_id, **timeouts)
    logger.info(
        "distributed: mode=%s process %d of %d, local devices %d, global devices %d",
        cfg.mode, jax.process_index(), jax.process_count(),
        jax.local_device_count(), jax.device_count())


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis ``"data"`` over all devices of all processes."""
    axis_types = (jax.sharding.AxisType.Auto,)
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=axis_types)
    devices = list(devices)
    if not devices:
        raise ValueError("make_data_mesh needs at least one device")
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=axis_types,
                         devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) dimension split over the ``"data"`` axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Same full value on every device (parameters, optimizer state)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def local_mesh_device_count(mesh: jax.sharding.Mesh) -> int:
    """How many of the mesh's devices belong to this process."""
    return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def global_batch(local_batch: Mapping[str, np.ndarray],
                 mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles per-process local batches into global batch-sharded arrays.

    Every process calls this with its own local batch (same keys, same shapes);
    the global leading dimension is local size x process count.

    Raises:
      ValueError: if arrays disagree on the batch size or it does not divide
        evenly over this process' devices.
    """
    if not local_batch:
        raise ValueError("global_batch got an empty batch")
    n_local_devices = local_mesh_device_count(mesh)
    if n_local_devices == 0:
        raise ValueError(f"process {jax.process_index()} owns no device of the mesh")
    sizes = {key: np.shape(value)[0] if np.ndim(value) else None
             for key, value in local_batch.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"all batch entries need the same leading batch dimension, got {sizes}")
    local_size = next(iter(sizes.values()))
    if local_size % n_local_devices:
        raise ValueError(
            f"per-process batch size {local_size} does not divide evenly over the "
            f"{n_local_devices} local devices of process {jax.process_index()}; "
            f"choose a global batch size divisible by {jax.device_count()} devices")
    sharding = batch_sharding(mesh)
    n_processes = len({d.process_index for d in mesh.devices.flat})
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (local_size * n_processes,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def process_shard() -> tuple[int, int]:
    """(this process' index, process count): which data shard to read."""
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes metrics, images and logs."""
    return jax.process_index() == 0


def log_topology(mesh: jax.sharding.Mesh) -> None:
    """Logs process index/count, device counts and the mesh layout."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    logger.info(
        "topology: process %d of %d, platform %s, %d local / %d global devices, "
        "mesh %s, local mesh devices %s",
        jax.process_index(), jax.process_count(), jax.default_backend(),
        jax.local_device_count(), jax.device_count(), dict(mesh.shape),
        [d.id for d in local])


def sync_global(name: str) -> None:
    """Barrier over all processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _to_host(x: Any) -> Any:
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def fetch_to_host(tree: Any) -> Any:
    """Copies a pytree of (global) arrays to numpy on every process.

    Fully addressable or fully replicated arrays are copied locally; arrays
    sharded across processes are gathered with ``process_allgather``, which is
    a collective: then every process must call this with the same tree.
    """
    return jax.tree.map(_to_host, tree)


class PreemptionMonitor:
    """Agrees, across processes, on the step at which to save and stop.

    With the distributed runtime up, JAX's preemption sync manager catches
    SIGTERM on any process and every process sees :meth:`reached` return True
    at the same step. In a single process without the runtime, a Python SIGTERM
    handler sets a flag and :meth:`reached` returns True at the next step.
    Call :meth:`reached` once per step, with the same step numbers everywhere.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        self._flag = False
        self._previous: dict[int, Any] = {}
        self.distributed = jax.distributed.is_initialized()
        if not self.distributed:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        logger.warning("received signal %d: will save and stop at the next step", signum)
        self._flag = True

    def reached(self, step: int) -> bool:
        """True if all processes must save a checkpoint at ``step`` and stop."""
        if self.distributed:
            return multihost_utils.reached_preemption_sync_point(int(step))
        return self._flag

    def close(self) -> None:
        """Restores the previous signal handlers (single-process mode)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> PreemptionMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
