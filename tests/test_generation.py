"""odediff.generation: what names a sampling run's files."""

import ml_collections
import pytest

from odediff.generation import block_tag


@pytest.mark.parametrize(
    "solver, steps, tag",
    [("", 0, ""), ("rk4", 2, "_blocks-rk4x2"), ("heun", 0, "_blocks-heunxown"), ("", 3, "_blocks-ownx3")],
)
def test_a_block_solver_chosen_at_sampling_time_gets_its_own_file_names(solver, steps, tag):
    sampling = ml_collections.ConfigDict({"sampler": "ddim", "steps": 25, "block_solver": solver, "block_steps": steps})
    assert block_tag(sampling) == tag
