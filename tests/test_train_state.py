"""odediff.train_state: the learning-rate schedules and the optimizer."""

import pytest

from helpers import tiny_config
from odediff.config import ConfigError
from odediff.train_state import learning_rate_schedule


def test_wsd_is_warmup_then_constant_then_linear_to_zero_over_the_last_decay_steps():
    tc = tiny_config().training
    tc.update(learning_rate=2.0, warmup_steps=10, num_steps=100, lr_schedule="wsd", decay_steps=20)
    lr = learning_rate_schedule(tc)
    expected = {0: 0.0, 5: 1.0, 10: 2.0, 50: 2.0, 80: 2.0, 85: 1.5, 90: 1.0, 99: 0.1, 100: 0.0}
    assert {s: round(float(lr(s)), 6) for s in expected} == expected
    constant = learning_rate_schedule(_with(tc, lr_schedule="constant"))
    assert all(float(constant(s)) == float(lr(s)) for s in range(80))  # a constant run can become wsd before 80
    for bad in (0, 95):
        with pytest.raises(ConfigError, match=f"training.decay_steps={bad} with lr_schedule=wsd"):
            learning_rate_schedule(_with(tc, decay_steps=bad))


def _with(tc, **kw):
    c = tc.copy_and_resolve_references()
    c.update(kw)
    return c
