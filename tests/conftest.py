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


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist hands out tests one at a time in the order below, not in its default first
    chunks of an eighth of the suite each, which gave every long test to the first worker."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk", None) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first, so that none is left to run alone at the end. The first two need the
    `reference` run, which the first of them trains, while the other worker starts on the long
    tests that do not need it; the remaining long tests that need it follow those."""

    def needs_reference(item: pytest.Item) -> bool:
        return "reference" in getattr(item, "fixturenames", ())

    long = [i for i in items if i.get_closest_marker("long") is not None]
    with_reference = [i for i in long if needs_reference(i)]
    order = with_reference[:2] + [i for i in long if not needs_reference(i)] + with_reference[2:]
    items[:] = order + [i for i in items if i.get_closest_marker("long") is None]


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
