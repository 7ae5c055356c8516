"""The config's checks: the choices they accept are read from the tables that implement them."""

import re

import diffrax
import pytest

from helpers import tiny_config
from odediff import samplers
from odediff.config import ConfigError, check_config, check_sampling, choices
from odediff.models import ode


def test_solver_choices_are_the_solver_table(monkeypatch):
    monkeypatch.setitem(ode.SOLVERS, "euler2", diffrax.Euler)
    monkeypatch.delitem(ode.SOLVERS, "rk4")
    config = tiny_config()
    config.model.cunet.solver = "euler2"
    check_config(config)
    config.model.cunet.solver = "rk4"
    with pytest.raises(ConfigError, match=re.escape(f"model.cunet.solver='rk4' is not one of {tuple(ode.SOLVERS)}")):
        check_config(config)
    config.model.name = "unet"  # the cU-Net's sub-config is not built, so not checked
    check_config(config)
    assert choices()["model.cunet.solver"] == tuple(ode.SOLVERS)


def test_sampler_choices_are_the_sampler_table(monkeypatch):
    def discrete(apply_fn, params, key, shape, schedule, num_steps=10, spacing="trailing"):
        raise NotImplementedError

    def solving(apply_fn, params, key, shape, schedule, num_steps=0, solver="heun", spacing="logsnr"):
        raise NotImplementedError

    monkeypatch.setitem(samplers.SAMPLERS, "discrete", discrete)
    monkeypatch.setitem(samplers.SAMPLERS, "solving", solving)
    monkeypatch.delitem(samplers.SAMPLERS, "ddim")
    s = tiny_config().sampling
    s.update(sampler="discrete", spacing="linspace")
    check_sampling(s)  # a discrete sampler (its default spacing is one) takes the discrete spacings
    s.update(sampler="solving", spacing="time_uniform", steps=0, solver="tsit5")
    check_sampling(s)  # a sampler taking a solver may solve adaptively
    s.update(sampler="discrete", spacing="", steps=0)
    with pytest.raises(
        ConfigError,
        match=r"sampling.steps=0 must be a positive integer \(0, adaptive, only with "
        r"sampling.sampler=ode or solving\)",
    ):
        check_sampling(s)
    s.update(sampler="ddim", steps=3)
    with pytest.raises(
        ConfigError,
        match=r"sampling.sampler='ddim' is not one of \('ancestral', 'ode', 'dpmpp2m', "
        r"'discrete', 'solving'\)",
    ):
        check_sampling(s)


@pytest.mark.parametrize("groups", [-1, True])
def test_unet_norm_groups_must_be_a_count(groups):
    c = tiny_config("unet")
    check_config(c)
    c.model.unet.norm_groups = groups
    with pytest.raises(ConfigError, match=re.escape(f"model.unet.norm_groups={groups!r} must be 0")):
        check_config(c)
