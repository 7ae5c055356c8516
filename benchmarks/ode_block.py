"""ODE block speed: each integration mode against a hand-unrolled reference.

python -m benchmarks.ode_block [--batch 16] [--out benchmarks/results/ode_block.json]

For euler and rk4 at 28x28 and 64x64, times the forward and forward+grad of one
ODE block's solve in each mode, and prints each as a ratio to the same steps
written by hand in jax.numpy.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import machine, markdown_table, median_time, write_json
from odediff.models.ode import MODES, ODESettings, VectorField, solve


def hand_unrolled(field, y, args, solver: str, steps: int):
    h = 1.0 / steps
    for _ in range(steps):
        if solver == "euler":
            y = y + h * field(y, args)
        else:
            k1 = field(y, args)
            k2 = field(y + 0.5 * h * k1, args)
            k3 = field(y + 0.5 * h * k2, args)
            k4 = field(y + h * k3, args)
            y = y + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/ode_block.json")
    a = ap.parse_args()

    rows, records = [], []
    for size, ch in ((28, 16), (64, 32)):
        vf = VectorField(ch)
        y = jax.random.normal(jax.random.key(0), (a.batch, size, size, ch))
        film = jnp.zeros((a.batch, ch))
        params = vf.init(jax.random.key(1), y, film, film)["params"]
        field = lambda s, p: vf.apply({"params": p}, s, film, film)
        for solver in ("euler", "rk4"):
            runs = {m: (lambda m: lambda p, s: solve(field, s, p, ODESettings(solver, a.steps, m)))(m) for m in MODES}
            runs["hand"] = lambda p, s: hand_unrolled(field, s, p, solver, a.steps)
            t = {}
            for name, fn in runs.items():
                fwd = jax.jit(fn)
                grad = jax.jit(jax.grad(lambda p, s, fn=fn: jnp.mean(jnp.square(fn(p, s)))))
                t[name] = (
                    median_time(fwd, params, y, repeats=a.repeats),
                    median_time(grad, params, y, repeats=a.repeats),
                )
            ref_f, ref_g = t["hand"]
            for name in MODES:
                f, g = t[name]
                rows.append(
                    [
                        f"{size}x{size}x{ch}",
                        f"{solver} x{a.steps}",
                        name,
                        f"{f * 1e3:.1f}",
                        f"{f / ref_f:.2f}",
                        f"{g * 1e3:.1f}",
                        f"{g / ref_g:.2f}",
                    ]
                )
                records.append(
                    {
                        "size": size,
                        "channels": ch,
                        "solver": solver,
                        "mode": name,
                        "forward_s": f,
                        "forward_ratio": f / ref_f,
                        "grad_s": g,
                        "grad_ratio": g / ref_g,
                    }
                )
            rows.append(
                [
                    f"{size}x{size}x{ch}",
                    f"{solver} x{a.steps}",
                    "hand-unrolled",
                    f"{ref_f * 1e3:.1f}",
                    "1.00",
                    f"{ref_g * 1e3:.1f}",
                    "1.00",
                ]
            )
    print(f"ODE block, batch {a.batch}, on {machine()}")
    print(markdown_table(["input", "solver", "mode", "fwd ms", "fwd / hand", "fwd+grad ms", "fwd+grad / hand"], rows))
    write_json(a.out, {"batch": a.batch, "results": records})


if __name__ == "__main__":
    main()
