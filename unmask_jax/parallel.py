"""Distributed start-up, the data-parallel mesh and global batches.

One module owns everything the trainer needs to run the same code on one CPU,
several GPUs or a multi-host TPU pod:

* :func:`initialize_distributed` starts the JAX distributed runtime (once, before
  any device access) in one of three modes:

  - ``auto`` (the default): :func:`detect_cluster` looks for a multi-process
    environment -- the ``UNMASK_*`` variables of ``launch/local_multiprocess.py``,
    a SLURM step with more than one task, an Open MPI job with more than one
    rank, a Cloud TPU VM -- and joins it; where there is none (a laptop, a CI
    machine, one GPU box) it runs as one process without starting anything and
    logs that it did so.
  - ``off``: single process, nothing is started, nothing is detected.
  - ``explicit``: coordinator address, process count and process id come from
    the config or, where a field is ``None``, from the environment variables
    ``UNMASK_COORDINATOR`` (``host:port`` of process 0),
    ``UNMASK_NUM_PROCESSES`` and ``UNMASK_PROCESS_ID``
    (what ``launch/local_multiprocess.py`` sets for each child).

  Both timeouts (initialisation, heartbeat) are passed through to JAX: a process
  that dies makes the others abort after ``heartbeat_timeout_s`` instead of
  hanging in a collective.

  The defaults of these settings live in one place, :class:`DistributedConfig`;
  ``configs/default.py`` builds ``config.distributed`` from it with
  :func:`distributed_config_defaults`.
* :func:`make_data_mesh`: one ``"data"`` axis over every device of every process.
* :func:`global_batch`: per-process local batches -> global ``jax.Array`` built
  with ``jax.make_array_from_process_local_data`` (global batch = per-process
  batch x process count).
* :func:`fetch_to_host`, :func:`sync_global`, :func:`is_main_process`,
  :func:`all_processes_max`, :func:`broadcast_from_main`: helpers for
  process-0-only output, collective barriers and agreeing on a value.
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

    This dataclass is the one home of the defaults of ``config.distributed``:
    ``configs/default.py`` builds that section with
    :func:`distributed_config_defaults`, so a default is stated only here.

    Attributes:
      mode: ``auto`` (default: join the multi-process environment that
        :func:`detect_cluster` finds, else run as one process), ``off`` (one
        process, no detection) or ``explicit`` (the three fields below, or the
        ``UNMASK_COORDINATOR`` / ``UNMASK_NUM_PROCESSES`` /
        ``UNMASK_PROCESS_ID`` environment variables where a field is ``None``).
      coordinator_address: ``host:port`` of process 0 (explicit mode).
      num_processes: total process count (explicit mode).
      process_id: this process' index in ``[0, num_processes)`` (explicit mode).
      initialization_timeout_s: how long processes wait for each other at start.
      heartbeat_timeout_s: after this long without a heartbeat a process is
        declared dead and every other process aborts (non-zero exit).
    """

    mode: str = "auto"
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


# Value type of each optional DistributedConfig field (a ConfigDict placeholder needs it).
_OPTIONAL_FIELD_TYPES = {"coordinator_address": str, "num_processes": int, "process_id": int}


def distributed_config_defaults():
    """``config.distributed`` for ``configs/default.py``, built from :class:`DistributedConfig`.

    Fields whose default is ``None`` become typed placeholders, so that
    ``--config.distributed.num_processes=2`` still parses on the command line.
    """
    from ml_collections import config_dict  # only configs need it

    section = config_dict.ConfigDict()
    for field in dataclasses.fields(DistributedConfig):
        value = field.default
        if value is None:
            value = config_dict.placeholder(_OPTIONAL_FIELD_TYPES[field.name])
        setattr(section, field.name, value)
    return section


@dataclasses.dataclass(frozen=True)
class ClusterEnvironment:
    """A multi-process environment found by :func:`detect_cluster`.

    Attributes:
      kind: ``unmask_launcher``, ``slurm``, ``openmpi`` or ``cloud_tpu``.
      description: for the log, e.g. ``"SLURM step with 8 tasks"``.
      num_processes: the process count when the environment states it (``None``
        for a Cloud TPU VM, whose worker count JAX reads from the VM metadata).
    """

    kind: str
    description: str
    num_processes: int | None = None


def _running_on_cloud_tpu_vm() -> bool:
    """What JAX decided at import time (TPU chips on the PCI bus and libtpu present)."""
    try:
        from jax._src import cloud_tpu_init  # private, hence the guard
    except ImportError:  # pragma: no cover - depends on the JAX version
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect_cluster(environ: Mapping[str, str] | None = None, *,
                   on_cloud_tpu_vm: bool | None = None
                   ) -> tuple[ClusterEnvironment | None, str]:
    """Looks for a multi-process environment; does not touch the network or devices.

    Checked in this order:

    1. ``UNMASK_COORDINATOR`` / ``UNMASK_NUM_PROCESSES`` / ``UNMASK_PROCESS_ID``
       (``launch/local_multiprocess.py``): joined as in ``explicit`` mode. Any one
       of them set counts (the others are then required), except
       ``UNMASK_NUM_PROCESSES=1``: one process, nothing to join.
    2. SLURM: ``SLURM_JOB_ID`` with more than one task in this step
       (``SLURM_STEP_NUM_TASKS``, else ``SLURM_NTASKS``). A step of one task
       runs as one process.
    3. Open MPI: ``OMPI_COMM_WORLD_SIZE`` > 1 (``mpirun -n N``).
    4. A Cloud TPU VM (TPU chips and libtpu, as JAX detected at import): JAX reads
       the worker list from the VM metadata. ``TPU_WORKER_HOSTNAMES`` naming one
       host means a single-host VM: one process.

    Args:
      environ: the environment to inspect (default ``os.environ``).
      on_cloud_tpu_vm: override the TPU VM check (tests).

    Returns:
      (environment or ``None``, a sentence for the log saying what was found).
    """
    env = os.environ if environ is None else environ

    unmask = [name for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
              if env.get(name)]
    notes = []
    if unmask:
        count = env.get(ENV_NUM_PROCESSES)
        count_int = int(count) if count and count.isdigit() else None
        if count_int == 1:
            notes.append("launch/local_multiprocess.py variables for one process")
        else:
            return (ClusterEnvironment(
                "unmask_launcher", f"launch/local_multiprocess.py variables "
                f"({', '.join(unmask)})", count_int), "found " + ", ".join(unmask))

    if env.get("SLURM_JOB_ID"):
        raw = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
        tasks = int(raw) if raw.isdigit() else 1
        if tasks > 1:
            return (ClusterEnvironment("slurm", f"SLURM job {env['SLURM_JOB_ID']} step with "
                                       f"{tasks} tasks", tasks), "found SLURM")
        notes.append(f"SLURM job {env['SLURM_JOB_ID']} with one task in this step")

    raw = env.get("OMPI_COMM_WORLD_SIZE", "")
    if raw.isdigit() and int(raw) > 1:
        return (ClusterEnvironment("openmpi", f"Open MPI job with {raw} ranks", int(raw)),
                "found Open MPI")
    if raw:
        notes.append("Open MPI job with one rank")

    tpu = _running_on_cloud_tpu_vm() if on_cloud_tpu_vm is None else on_cloud_tpu_vm
    if tpu:
        hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
        if len(hosts) == 1:
            notes.append("single-host Cloud TPU VM (TPU_WORKER_HOSTNAMES names one host)")
        else:
            count = len(hosts) if hosts else None
            what = f"{count} hosts" if count else "worker list from the VM metadata"
            return (ClusterEnvironment("cloud_tpu", f"Cloud TPU VM ({what})", count),
                    "found a Cloud TPU VM")

    if not notes:
        notes.append("no launcher, SLURM, Open MPI or Cloud TPU pod variables")
    return None, "; ".join(notes)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from err


def resolve_explicit(cfg: DistributedConfig) -> tuple[str, int, int]:
    """(coordinator, process count, process id) for explicit mode (and for auto
    mode when the ``UNMASK_*`` variables are present).

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
            f"distributed.mode={cfg.mode!r} needs " + ", ".join(missing)
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
    mode nothing is started. In ``auto`` mode with no multi-process environment
    (see :func:`detect_cluster`) nothing is started either, and a log line says
    so. Raises ``RuntimeError`` (from JAX) if devices were already touched, and
    ``ValueError`` with a hint if an environment was found but JAX cannot join it.
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
        cluster, note = detect_cluster()
        if cluster is None:
            logger.info("distributed: mode=auto found no multi-process environment (%s): "
                        "running as a single process, jax.distributed not started", note)
            return
        logger.info("distributed: mode=auto found %s", cluster.description)
        if cluster.kind == "unmask_launcher":
            coordinator, num_processes, process_id = resolve_explicit(cfg)
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=num_processes,
                process_id=process_id, **timeouts)
        else:
            try:
                jax.distributed.initialize(**timeouts)
            except ValueError as err:
                raise ValueError(
                    f"distributed.mode='auto' found a {cluster.description} but JAX could "
                    "not join it; start the processes with srun / mpirun / on every TPU "
                    "worker, or use mode='explicit' with a coordinator (or mode='off' for "
                    f"one process). JAX said: {err}") from err
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


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
    """The platform of the mesh's devices ('cpu', 'gpu', 'tpu'): what its programs are
    traced and compiled for, also when the devices are compile-only ones of another kind
    than this host's (``--mode=compile``)."""
    return str(mesh.devices.flat[0].platform).lower()


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) dimension split over the ``"data"`` axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Same full value on every device (parameters, optimizer state)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def split_axis(shape: Sequence[int], num_devices: int, min_elements: int = 1 << 14
               ) -> int | None:
    """The dimension of an array of ``shape`` to split over ``num_devices``: its largest that
    they divide (the last such on a tie), or None (keep it whole) when it has fewer than
    ``min_elements`` elements or no dimension divides. Small arrays (biases, norms, step
    counters) stay whole: splitting them saves nothing and costs a gather each."""
    size = int(np.prod(shape)) if len(shape) else 1
    if num_devices == 1 or size < min_elements:
        return None
    best = None
    for axis, dim in enumerate(shape):
        if dim % num_devices == 0 and (best is None or dim >= shape[best]):
            best = axis
    return best


def split_over_data(shape: Sequence[int], mesh: jax.sharding.Mesh,
                    min_elements: int = 1 << 14) -> jax.sharding.NamedSharding:
    """An array split over the ``"data"`` axis along :func:`split_axis`'s dimension, or
    replicated.

    ZeRO-style sharding of state that every device would otherwise hold whole: each device
    keeps and updates 1/N of it; XLA inserts the reduce-scatters and all-gathers that the
    step's uses of the whole array need."""
    axis = split_axis(shape, mesh.shape[DATA_AXIS], min_elements)
    if axis is None:
        return replicated_sharding(mesh)
    spec = [None] * len(shape)
    spec[axis] = DATA_AXIS
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


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


def all_processes_max(value: int) -> int:
    """The largest of every process' ``value`` (a collective; the value itself with one process)."""
    if jax.process_count() == 1:
        return int(value)
    gathered = multihost_utils.process_allgather(np.asarray(value, np.int32))
    return int(np.max(gathered))


def broadcast_from_main(value: int) -> int:
    """Process 0's ``value`` on every process (a collective; identity with one process)."""
    if jax.process_count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))


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
