"""The grain pipeline hands out exactly data.get_batch's batches, in threads or worker
processes, and continues from a saved state."""

import json

import jax
import numpy as np
import pytest

from odediff import data, parallel
from odediff.config import default_config
from odediff.input_pipeline import BatchIterator

BATCH, SEED = 8, 3


@pytest.fixture(scope="module")
def setup():
    c = default_config()
    c.data.random_flip = True
    c.model.num_classes = 10
    return c, data.load_source(c.data, "train"), parallel.make_mesh()


def _expected(source, c, step):
    return data.get_batch(source, c.data, BATCH, SEED, step, with_labels=True)


def _take(it, n):
    return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


@pytest.mark.parametrize("prefetch,workers", [(0, 0), (3, 0), (2, 1)])
def test_batches_are_get_batch_of_each_step_and_resume_from_the_saved_state(setup, prefetch, workers):
    c, source, mesh = setup
    c = c.copy_and_resolve_references()
    c.data.prefetch, c.data.num_workers = prefetch, workers
    with BatchIterator(source, c.data, BATCH, SEED, mesh, start=5, with_labels=True) as it:
        first = _take(it, 3)
        state = json.loads(json.dumps(it.state()))  # as a checkpoint's JSON record holds it
        later = _take(it, 2)
    for step, (images, labels) in zip(range(5, 10), first + later):
        want_images, want_labels = _expected(source, c, step)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    assert state["step"] == 8
    with BatchIterator(source, c.data, BATCH, SEED, mesh, start=8, with_labels=True, state=state) as it:
        again = _take(it, 2)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(later)):
        np.testing.assert_array_equal(a, b)


def test_a_state_saved_with_another_layout_starts_afresh_at_the_step(setup):
    c, source, mesh = setup
    c = c.copy_and_resolve_references()
    with BatchIterator(source, c.data, BATCH, SEED, mesh, start=0, with_labels=True) as it:
        _take(it, 4)
        state = it.state()
    c.data.prefetch = 1
    state["layout"]["num_workers"] = 2  # saved by a run with worker processes
    with BatchIterator(source, c.data, BATCH, SEED, mesh, start=4, with_labels=True, state=state) as it:
        images, _ = _take(it, 1)[0]
    np.testing.assert_array_equal(images, _expected(source, c, 4)[0])


def test_batches_are_sharded_over_the_mesh(setup):
    c, source, mesh = setup
    with BatchIterator(source, c.data, BATCH, SEED, mesh) as it:
        images = next(it)
    assert images.sharding == parallel.batch_sharded(mesh) and images.shape == (BATCH, 16, 16, 1)
