"""Test setup: 4 fake CPU devices, compile-light XLA flags and strict promotion, set before JAX
initialises."""

import fcntl
import os
import shutil

# Compile-light: LLVM's optimisations and XLA:CPU's fusion emitters cost more compile time than
# these tiny programs run for (about half of it); programs that run long (a sampler's 1,000 steps)
# compile with helpers.FULL_OPTIMISATION.
LIGHT_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {LIGHT_XLA_FLAGS}")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import N, steps_on_disk, train_in_process  # noqa: E402

pytest_plugins = ["pytester", "suite_budget"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first, as pytest-xdist hands tests out in this order, so that none is left to run
    alone at the end; among them first those that need the `reference` run, which the first of
    them trains while the other worker starts on tests that do not need it."""

    def order(item: pytest.Item) -> tuple[bool, bool]:
        long = item.get_closest_marker("long") is not None
        return not long, long and "reference" not in getattr(item, "fixturenames", ())

    items.sort(key=order)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """One persistent compilation cache for this process, the train.py / sample.py
    subprocesses and the other pytest-xdist workers, which compile the same programs
    again and again."""
    cache = _shared_root(tmp_path_factory) / "jax_cache"
    cache.mkdir(exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(cache),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.items():
            mp.setenv(name.upper(), str(value))
            jax.config.update(name, value)
        yield


def _shared_root(tmp_path_factory) -> Path:
    """A directory every pytest-xdist worker of this run sees."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of N steps, trained by the first worker that needs it (read-only)."""
    workdir = _shared_root(tmp_path_factory) / "reference" / "run"
    with open(workdir.parent.parent / "reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir.parent / "done").exists():
            shutil.rmtree(workdir.parent, ignore_errors=True)
            workdir.parent.mkdir()
            train_in_process(workdir)
            (workdir.parent / "done").touch()
    assert steps_on_disk(workdir)[-1] == N
    return workdir


@pytest.fixture(scope="session")
def existing(reference, tmp_path_factory) -> Path:
    """A copy of a finished run, which failed commands must leave as it is."""
    workdir = tmp_path_factory.mktemp("existing") / "run"
    shutil.copytree(reference, workdir)
    return workdir
