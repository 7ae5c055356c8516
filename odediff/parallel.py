"""Data parallelism with jit + NamedSharding over all devices, multi-host through jax.distributed."""

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from odediff.config import ConfigError

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins JAX's distributed runtime: explicitly when given a coordinator, else when
    JAX can detect a cluster by itself (SLURM with several tasks, TPU pods).

    Must run before anything touches a device.
    """
    if coordinator_address:
        # Only the CPU backend reads this; without it CPU processes cannot share collectives.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize()


def one_step_at_a_time(step_fn: Callable, mesh: Mesh) -> Callable:
    """`step_fn`, waiting for each call's results where calls must not queue: XLA:CPU's
    collectives between several CPU devices of one process deadlock when executions
    queue up behind one another (seen within a few hundred steps of a data-parallel
    step, jax 0.10; a wait per step avoids it). Elsewhere `step_fn` itself."""
    if not (mesh.devices.flat[0].platform == "cpu" and len(mesh.local_devices) > 1):
        return step_fn

    def waiting(*args):
        return jax.block_until_ready(step_fn(*args))

    return waiting


def cpu_devices_for(batch_size: int, env: dict | None = None, cores: int | None = None) -> int | None:
    """How many XLA CPU devices to make for a batch: one per core when the batch splits
    evenly over them, else one; None when the environment already says
    (XLA_FLAGS' --xla_force_host_platform_device_count or JAX_NUM_CPU_DEVICES)."""
    env = os.environ if env is None else env
    if "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "") or env.get("JAX_NUM_CPU_DEVICES"):
        return None
    cores = cores or os.cpu_count() or 1
    return cores if batch_size % cores == 0 else 1


def use_cpu_cores(batch_size: int) -> None:
    """Splits the CPU into one XLA device per core (see `cpu_devices_for`): XLA:CPU runs a
    convolution narrower than ~128 channels on one thread, so one device would leave
    cores idle. Only the CPU backend reads the setting, so accelerators are unaffected.
    Must run before anything touches a device; for one process only."""
    n = cpu_devices_for(batch_size)
    if n is not None:
        jax.config.update("jax_num_cpu_devices", n)


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis type Auto (diffrax needs it)."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly over devices (and so over processes)."""
    n = jax.device_count()
    if batch_size % n:
        raise ConfigError(
            f"training.batch_size={batch_size} is not divisible by the {n} devices: "
            f"pass --config.training.batch_size=<a multiple of {n}>"
        )


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of the global batch -> one global array split on the data axis."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local)


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or fully addressable) array as numpy, on any process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))
