"""The paper's efficiency table: cU-Net against the DDPM U-Net at CelebA 64x64x3, in one run.

python -m benchmarks.paper_table [--config configs/celeba64.py] [--batch 16] [--repeats 10]
                                 [--quick] [--out benchmarks/results/paper_table.json]

Per denoiser: parameters; GFLOP of one evaluation (XLA's cost analysis of the forward at
batch 1 lowered for a CPU on any machine, every ODE-solver stage included, 2 FLOPs per
multiply-add); forward latency at --batch and at batch 1 (median over --repeats after a
warm-up, the models alternated); one image with DDIM 50 and 256 steps, measured and as
steps x batch-1 latency; the training step's time at --batch and its memory (XLA's memory
analysis: arguments + outputs + temporaries - aliased; the device's peak_bytes_in_use where
it reports one), also with every block rematerialised, with bfloat16 activations and with
both (compiled only). Then per fixed-step cU-Net solver setting (--solvers x --ode_steps):
GFLOP, the ratio to the U-Net and forward latency.
--cpu_devices (default: one per core): the XLA CPU devices the batch is split over.
--memory_only: only the four memory figures per denoiser (compiled, nothing run).
--quick: batch 2, 2 repeats, solvers euler and rk4, no training step and no DDIM runs.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.common import machine, markdown_table, write_json
from odediff.config import load_config_file
from odediff.models import build_denoiser
from odediff.parallel import batch_sharded, make_mesh, replicated
from odediff.samplers import ddim_sample
from odediff.schedule import make_schedule
from odediff.train_state import create_train_state, make_optimizer
from odediff.training import make_train_step

REPO = Path(__file__).resolve().parents[1]
STAGES = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


def gflop(fn, *args) -> float:
    """GFLOP of fn(*args) by XLA's cost analysis of its module as lowered for a CPU, whatever
    devices the arguments are on: a GPU's compiled module leaves its convolutions to library
    calls that its cost analysis does not count, and its lowered module reports no count."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=cpu), args)
    ca = jax.jit(fn).lower(*abstract).cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return dict(ca or {}).get("flops", float("nan")) / 1e9


def config_name(path: str) -> str:
    """The config's path relative to the repository where it lies inside it, as given otherwise."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def memory(compiled) -> int | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(
        m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - getattr(m, "alias_size_in_bytes", 0)
    )


def forward(model):
    return jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))


def inputs(config, batch):
    """A batch split over the devices where it divides evenly (batch 1 runs replicated)."""
    s = config.data.image_size
    x = jax.random.normal(jax.random.key(1), (batch, s, s, config.data.channels), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    if batch > 1 and batch % jax.device_count() == 0:
        x, t = jax.device_put((x, t), batch_sharded(make_mesh()))
    return x, t


def alternated_times(fns: dict, repeats: int) -> dict:
    """{name: [seconds of each call]}, each fn called once per round in turn, after a warm-up."""
    for f in fns.values():
        jax.block_until_ready(f())
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[n].append(time.perf_counter() - t0)
    return times


def alternated_medians(fns: dict, repeats: int) -> dict:
    """{name: median seconds} of `alternated_times`."""
    return {n: statistics.median(v) for n, v in alternated_times(fns, repeats).items()}


def step_memory_variants(name: str, config, batch: int, params_sharding, plain: bool = False) -> dict:
    """XLA's memory of the training step with every block rematerialised and/or bfloat16
    activations (compiled only, not run); with `plain` also the step as configured."""
    out = {}
    variants = ((False, "float32"),) * plain + ((True, "float32"), (False, "bfloat16"), (True, "bfloat16"))
    for remat, dtype in variants:
        v = config.copy_and_resolve_references()
        v.training.batch_size = batch
        v.model[name].remat, v.training.compute_dtype = remat, dtype
        m, tx = build_denoiser(v.model), make_optimizer(v.training)
        sched = make_schedule(v.diffusion.beta_schedule, v.diffusion.num_timesteps)
        state = jax.device_put(create_train_state(m, tx, v, jax.random.key(0)), params_sharding)
        comp = jax.jit(make_train_step(m, tx, sched, v)).lower(state, inputs(v, batch)[0]).compile()
        tag = ("remat_" if remat else "") + ("bf16_" if dtype == "bfloat16" else "")
        out[f"train_step_peak_bytes_xla_{tag}batch{batch}"] = memory(comp)
    return out


def memory_table(configs: dict, a, params_sharding) -> None:
    """--memory_only: the training step's memory, as configured, rematerialised, bfloat16, both."""
    rec = {name: step_memory_variants(name, c, a.batch, params_sharding, plain=True) for name, c in configs.items()}
    rows = []
    for tag, label in (
        ("", "as configured"),
        ("remat_", "every block rematerialised"),
        ("bf16_", "bfloat16 activations"),
        ("remat_bf16_", "rematerialised, bfloat16"),
    ):
        k = f"train_step_peak_bytes_xla_{tag}batch{a.batch}"
        cu, un = rec["cunet"][k], rec["unet"][k]
        base_cu, base_un = (
            rec["cunet"][f"train_step_peak_bytes_xla_batch{a.batch}"],
            rec["unet"][f"train_step_peak_bytes_xla_batch{a.batch}"],
        )
        rows.append(
            [
                label,
                f"{cu / 2**20:.0f}",
                f"{cu / base_cu:.2f}",
                f"{un / 2**20:.0f}",
                f"{un / base_un:.2f}",
                f"{cu / un:.3f}",
            ]
        )
    print(
        f"\ntraining step memory (XLA memory analysis, MiB), batch {a.batch}, {Path(a.config).name}, "
        f"{jax.device_count()} devices, {machine()}"
    )
    print(
        markdown_table(["step", "cU-Net", "/ as configured", "DDPM U-Net", "/ as configured", "cU-Net / U-Net"], rows)
    )
    write_json(
        a.out,
        {
            "machine": machine(),
            "config": config_name(a.config),
            "batch": a.batch,
            "devices": jax.device_count(),
            "models": rec,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "celeba64.py"))
    ap.add_argument("--image_size", type=int, default=None, help="override data.image_size (smoke tests)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sample_steps", default="50,256")
    ap.add_argument("--solvers", default="euler,heun,midpoint,rk4")
    ap.add_argument("--ode_steps", default="1,2")
    ap.add_argument(
        "--cpu_devices",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="XLA CPU devices to split the batch over (no effect on accelerators)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--memory_only",
        action="store_true",
        help="only the training step's memory with and without remat / bfloat16 (compiles, runs nothing)",
    )
    ap.add_argument("--out", default="benchmarks/results/paper_table.json")
    a = ap.parse_args()
    jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    params_sharding = replicated(make_mesh())
    if a.quick:
        a.batch, a.repeats = min(a.batch, 2), min(a.repeats, 2)
        if a.solvers == ap.get_default("solvers"):
            a.solvers = "euler,rk4"
    base = load_config_file(a.config)
    if a.image_size:
        base.data.image_size = a.image_size
    configs = {}
    for name in ("cunet", "unet"):
        c = load_config_file(a.config)
        c.data.update(base.data.to_dict())
        c.model.name = name
        configs[name] = c

    if a.memory_only:
        memory_table(configs, a, params_sharding)
        return
    models, params, rec = {}, {}, {}
    for name, c in configs.items():
        m = build_denoiser(c.model)
        x1, t1 = inputs(c, 1)
        p = jax.device_put(jax.jit(m.init)(jax.random.key(0), x1, t1)["params"], params_sharding)
        models[name], params[name] = m, p
        tc = time.perf_counter()
        forward(m).lower(p, x1, t1).compile()
        rec[name] = {
            "params": int(sum(v.size for v in jax.tree.leaves(p))),
            "compile_forward_s": time.perf_counter() - tc,
            "gflop_per_image": gflop(forward(m), p, x1, t1),
        }
        print(f"{name}: {rec[name]['params']:,} params, {rec[name]['gflop_per_image']:.2f} GFLOP/image", flush=True)

    # forward latency at --batch and at batch 1, alternated
    fwd_b, fwd_1 = {}, {}
    for name, c in configs.items():
        xb, tb = inputs(c, a.batch)
        x1, t1 = inputs(c, 1)
        fb = forward(models[name]).lower(params[name], xb, tb).compile()
        f1 = forward(models[name]).lower(params[name], x1, t1).compile()
        fwd_b[name] = (lambda f, p, x, t: lambda: f(p, x, t))(fb, params[name], xb, tb)
        fwd_1[name] = (lambda f, p, x, t: lambda: f(p, x, t))(f1, params[name], x1, t1)
    lat_b = alternated_medians(fwd_b, a.repeats)
    lat_1 = alternated_medians(fwd_1, a.repeats)
    steps_list = [int(s) for s in a.sample_steps.split(",")]
    for name in configs:
        rec[name][f"forward_batch{a.batch}_s"] = lat_b[name]
        rec[name]["forward_batch1_s"] = lat_1[name]
        for k in steps_list:
            rec[name][f"ddim{k}_per_image_estimate_s"] = k * lat_1[name]

    # full DDIM runs at batch 1 and training steps
    if not a.quick:
        for k in steps_list:
            fns = {}
            for name, c in configs.items():
                sched = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
                m = models[name]
                shape = (1, c.data.image_size, c.data.image_size, c.data.channels)
                f = jax.jit(
                    lambda p, key, m=m, sched=sched, c=c, shape=shape: ddim_sample(
                        lambda pp, x, t: m.apply({"params": pp}, x, t),
                        p,
                        key,
                        shape,
                        sched,
                        k,
                        prediction=c.diffusion.prediction,
                    )
                )
                f = f.lower(params[name], jax.random.key(0)).compile()
                fns[name] = (lambda f, p: lambda: f(p, jax.random.key(0)))(f, params[name])
            for name, s in alternated_medians(fns, max(1, min(3, a.repeats))).items():
                rec[name][f"ddim{k}_per_image_s"] = s
        steps = {}
        for name, c in configs.items():
            c.training.batch_size = a.batch
            m, tx = models[name], make_optimizer(c.training)
            sched = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
            state = jax.device_put(create_train_state(m, tx, c, jax.random.key(0)), params_sharding)
            xb, _ = inputs(c, a.batch)
            for tag, dtype in (("", "float32"), ("bf16_", "bfloat16")):  # training.compute_dtype
                cd = c.copy_and_resolve_references()
                cd.training.compute_dtype = dtype
                tc = time.perf_counter()
                comp = jax.jit(make_train_step(m, tx, sched, cd)).lower(state, xb).compile()
                if not tag:
                    rec[name]["compile_train_step_s"] = time.perf_counter() - tc
                    rec[name][f"train_step_peak_bytes_xla_batch{a.batch}"] = memory(comp)
                    rec[name]["train_step_gflop"] = gflop(make_train_step(m, tx, sched, cd), state, xb)
                steps[name, tag] = (lambda f, s, b: lambda: f(s, b)[1]["loss"])(comp, state, xb)
        for (name, tag), s in alternated_medians(steps, a.repeats).items():
            rec[name][f"train_step_{tag}batch{a.batch}_s"] = s
        for name in configs:
            rec[name]["train_step_bf16_over_f32"] = (
                rec[name][f"train_step_bf16_batch{a.batch}_s"] / rec[name][f"train_step_batch{a.batch}_s"]
            )
        for name, c in configs.items():
            rec[name].update(step_memory_variants(name, c, a.batch, params_sharding))
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            rec["device_peak_bytes_in_use_whole_run"] = int(stats["peak_bytes_in_use"])

    # the table
    cu, un = rec["cunet"], rec["unet"]
    keys = [
        ("params", "parameters", lambda v: f"{v:,}"),
        ("gflop_per_image", "GFLOP per evaluation (XLA, 2 x MAC)", lambda v: f"{v:.2f}"),
        (f"forward_batch{a.batch}_s", f"forward, batch {a.batch} (ms)", lambda v: f"{1e3 * v:.1f}"),
        ("forward_batch1_s", "forward, batch 1 (ms)", lambda v: f"{1e3 * v:.2f}"),
    ]
    for k in steps_list:
        keys.append((f"ddim{k}_per_image_s", f"DDIM {k}, one image, measured (s)", lambda v: f"{v:.3f}"))
        keys.append(
            (f"ddim{k}_per_image_estimate_s", f"DDIM {k}, one image, {k} x batch-1 forward (s)", lambda v: f"{v:.3f}")
        )
    keys += [
        (f"train_step_batch{a.batch}_s", f"training step, batch {a.batch} (ms)", lambda v: f"{1e3 * v:.1f}"),
        (
            f"train_step_bf16_batch{a.batch}_s",
            f"training step, batch {a.batch}, bfloat16 compute (ms)",
            lambda v: f"{1e3 * v:.1f}",
        ),
        ("train_step_bf16_over_f32", "training step, bfloat16 / float32 time", lambda v: f"{v:.3f}"),
        ("train_step_gflop", f"training step GFLOP, batch {a.batch}", lambda v: f"{v:.1f}"),
        (
            f"train_step_peak_bytes_xla_batch{a.batch}",
            f"training step memory, batch {a.batch} (MiB, XLA)",
            lambda v: f"{v / 2**20:.0f}",
        ),
    ]
    for tag, label in (
        ("remat_", "every block rematerialised"),
        ("bf16_", "bfloat16 activations"),
        ("remat_bf16_", "rematerialised, bfloat16"),
    ):
        keys.append(
            (
                f"train_step_peak_bytes_xla_{tag}batch{a.batch}",
                f"training step memory, {label} (MiB, XLA)",
                lambda v: f"{v / 2**20:.0f}",
            )
        )
    table = []
    ratios = {}
    for k, label, fmt in keys:
        if k in cu and cu[k] is not None and un.get(k):
            ratios[k] = cu[k] / un[k]
            table.append([label, fmt(cu[k]), fmt(un[k]), f"{ratios[k]:.3f}"])
    c_cu, c_un = configs["cunet"].model.cunet, configs["unet"].model.unet
    print(
        f"\n{Path(a.config).name} at {base.data.image_size}x{base.data.image_size}x{base.data.channels} on {machine()}, "
        f"batch split over {jax.device_count()} devices"
    )
    print(
        f"cU-Net nf {c_cu.nf} x {tuple(c_cu.ch_mult)}, {c_cu.solver} x{c_cu.ode_steps}; "
        f"U-Net ch {c_un.ch} x {tuple(c_un.ch_mult)}, {c_un.num_res_blocks} res blocks"
    )
    print(markdown_table(["", "cU-Net", "DDPM U-Net", "cU-Net / U-Net"], table))
    summary = {
        "config": config_name(a.config),
        "image_size": base.data.image_size,
        "batch": a.batch,
        "repeats": a.repeats,
        "quick": a.quick,
        "devices": jax.device_count(),
        "models": rec,
        "ratios": ratios,
        "flop_convention": "XLA cost_analysis flops (2 per multiply-add)",
    }
    write_json(a.out, {**summary, "solvers": None})  # kept if the solver rows below are cut short

    # solver settings
    solver_rows, solver_rec = [], []
    fns = {}
    for solver in a.solvers.split(","):
        for n in (int(s) for s in a.ode_steps.split(",")):
            c = load_config_file(a.config)
            c.data.update(base.data.to_dict())
            c.model.name = "cunet"
            c.model.cunet.solver, c.model.cunet.ode_steps = solver, n
            m = build_denoiser(c.model)
            x1, t1 = inputs(c, 1)
            xb, tb = inputs(c, a.batch)
            g = gflop(forward(m), params["cunet"], x1, t1)
            fb = forward(m).lower(params["cunet"], xb, tb).compile()
            fns[(solver, n)] = (lambda f, x, t: lambda: f(params["cunet"], x, t))(fb, xb, tb)
            solver_rec.append(
                {
                    "solver": solver,
                    "ode_steps": n,
                    "evaluations_per_block": STAGES.get(solver, 0) * n,
                    "gflop_per_image": g,
                    "flops_ratio_to_unet": g / un["gflop_per_image"],
                }
            )
    lat = alternated_medians(fns, a.repeats)
    g_rk4 = next((r["gflop_per_image"] for r in solver_rec if r["solver"] == "rk4" and r["ode_steps"] == 1), None)
    for r in solver_rec:
        r[f"forward_batch{a.batch}_s"] = lat[(r["solver"], r["ode_steps"])]
        solver_rows.append(
            [
                f"{r['solver']} x{r['ode_steps']}",
                r["evaluations_per_block"],
                f"{r['gflop_per_image']:.2f}",
                f"{r['gflop_per_image'] / g_rk4:.2f}" if g_rk4 else "",
                f"{r['flops_ratio_to_unet']:.3f}",
                f"{1e3 * r[f'forward_batch{a.batch}_s']:.1f}",
            ]
        )
    print("\ncU-Net ODE-solver settings (same weights)")
    print(
        markdown_table(
            [
                "solver",
                "field evals / block",
                "GFLOP / evaluation",
                "vs rk4 x1",
                "FLOPs / U-Net",
                f"forward batch {a.batch} (ms)",
            ],
            solver_rows,
        )
    )
    print("Reference (notes, PyTorch counter, 2 x MAC): DDPM U-Net 48.4 GFLOP, authors' cU-Net 5.65 GFLOP (ratio 0.12)")
    write_json(a.out, {**summary, "solvers": solver_rec})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
