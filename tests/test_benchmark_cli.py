"""The sample-quality benchmarks' command lines: which points they run, and misuse."""

import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import denoise, nfe_sweep, paper_table


def test_the_nfe_sweep_runs_every_sampler_at_each_nfe_and_the_ancestral_reference_only_when_asked():
    pts = [(name, steps) for name, steps, _ in nfe_sweep.points([10, 50])]
    assert pts == [
        ("ddim", 10),
        ("dpmpp2m", 10),
        ("ode", 5),
        ("ddim", 50),
        ("dpmpp2m", 50),
        ("ode", 25),
        ("ancestral", 1000),
    ]
    assert [name for name, _, _ in nfe_sweep.points([10], ancestral_steps=0)] == ["ddim", "dpmpp2m", "ode"]
    assert nfe_sweep.points([10], ancestral_steps=250)[-1][:2] == ("ancestral", 250)


@pytest.mark.parametrize("args, message", [(["--workdirs", "a/run", "b/run"], "distinct names"), ([], "--workdirs")])
def test_denoise_refuses_runs_it_could_not_tell_apart_in_its_table(args, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["denoise.py", *args])
    with pytest.raises(SystemExit) as e:
        denoise.main()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_paper_table_counts_flops_on_a_cpu_lowering_with_two_per_multiply_add():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    assert paper_table.gflop(lambda a, b: a @ b, a, b) * 1e9 == 2 * 64 * 32 * 16
    conv = lambda x, w: jax.lax.conv(x, w, (1, 1), "SAME")  # NCHW, OIHW
    # taps that land inside the 8x8 image, per row and column: 8 * 3 less one at each border
    taps = (8 * 3 - 2) ** 2
    assert paper_table.gflop(conv, jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3))) * 1e9 == 2 * 2 * 4 * 3 * taps
