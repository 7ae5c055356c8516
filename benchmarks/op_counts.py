"""How many XLA ops each denoiser's forward and training step compile to: what predicts launch-bound steps.

python -m benchmarks.op_counts [--settings celeba64,mnist16] [--out benchmarks/results/op_counts.json]

Settings:
- celeba64: configs/celeba64.py (64x64x3) at batch 16: the cU-Net (nf 16, RK4 x1) and the
  DDPM U-Net (ch 128);
- mnist16: the MNIST comparison's cpu preset (benchmarks.train_compare PRESETS["cpu"] on
  configs/mnist.py: 16x16x1, batch 64): the cU-Net at nf 8 with Heun x1 and with RK4 x1, and
  the U-Net at ch 32.

Each function is compiled for one CPU device and its optimised HLO
(`jax.jit(f).lower(...).compile().as_text()`) counted (`hlo_counts`):
- ops: instructions of the computations that run one instruction after another (the entry,
  while bodies and conditions, conditional branches, called computations), less those that
  need no kernel (parameters, constants, tuples, bitcasts): about the kernels one call
  launches, each while loop counted once, however often it turns;
- fusions, convolutions (also those inside fusions, and custom-calls to a convolution
  library), custom-calls, while loops, dots, copies and transposes among the ops;
- instructions: every instruction of the module, those inside fusions too;
- lowered_ops: the ops of the HLO before XLA's optimisation (nothing fused yet).
XLA:GPU fuses differently from XLA:CPU (a GPU's convolutions are library calls, its
elementwise fusions are much alike), so these are a CPU's counts, read for proportions.
Also the parameters and the GFLOP per image of the forward (benchmarks.paper_table.gflop:
XLA's cost analysis of the forward at batch 1, 2 per multiply-add) and of the training step.
The JSON holds no timings: it is the same on every run of the same software.
"""

import argparse
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.common import markdown_table, write_json
from benchmarks.paper_table import gflop
from odediff.config import load_config_file
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.train_state import create_train_state, make_optimizer
from odediff.training import make_train_step

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("celeba64", "mnist16")
# Instructions that launch no kernel of their own.
FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "add-dependency",
    "opt-barrier",
    "partition-id",
    "replica-id",
}
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_CALLED = re.compile(r"\b(calls|to_apply|condition|body|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LIST = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")


def _opcode(rhs: str) -> str:
    """The opcode of an instruction's right-hand side `type opcode(operands), attributes`."""
    if rhs.startswith("("):  # a tuple type, maybe nested
        depth, i = 0, 0
        while True:
            depth += (rhs[i] == "(") - (rhs[i] == ")")
            i += 1
            if depth == 0:
                break
    else:
        i = rhs.index(" ")
    m = re.match(r"\s*([a-z][\w\-]*)\(", rhs[i:])
    return m.group(1) if m else "?"


def _instruction_lines(text: str):
    """(computation, whether it is the entry, instruction name, right-hand side) of each instruction."""
    current, is_entry = None, False
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(")[0]:
                current, is_entry = m.group(2), bool(m.group(1))
                yield current, is_entry, None, None
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            yield current, is_entry, m.group(1), m.group(2)


def parse_hlo(text: str) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """(entry name, {computation: [(opcode, attributes text)]}) of an HLO module's text."""
    comps: dict[str, list[tuple[str, str]]] = {}
    entry = ""
    for comp, is_entry, _name, rhs in _instruction_lines(text):
        entry = comp if is_entry else entry
        if rhs is None:
            comps[comp] = []
        else:
            comps[comp].append((_opcode(rhs), rhs))
    return entry, comps


def instructions(text: str) -> dict[str, tuple[str, str, str]]:
    """{instruction name: (computation, opcode, attributes text)} of an HLO module's text."""
    return {name: (comp, _opcode(rhs), rhs) for comp, _e, name, rhs in _instruction_lines(text) if rhs is not None}


def _called(rhs: str) -> list[tuple[str, str]]:
    out = [(kind, name) for kind, name in _CALLED.findall(rhs)]
    for kind, names in _CALLED_LIST.findall(rhs):
        out += [(kind, n.strip().lstrip("%")) for n in names.split(",") if n.strip()]
    return out


def hlo_counts(text: str) -> dict:
    """Counts of an HLO module's text (see the module's docstring)."""
    entry, comps = parse_hlo(text)
    run, fused, todo = set(), set(), [entry]
    while todo:  # the computations that run instruction by instruction, from the entry down
        name = todo.pop()
        if name in run or name not in comps:
            continue
        run.add(name)
        for op, rhs in comps[name]:
            for kind, callee in _called(rhs):
                if op == "fusion" and kind == "calls":
                    fused.add(callee)
                elif op in ("while", "conditional", "call", "async-start") or kind == "called_computations":
                    todo.append(callee)
    fused_all = set(fused)
    todo = list(fused)
    while todo:  # fusions nest
        for op, rhs in comps.get(todo.pop(), []):
            for _kind, callee in _called(rhs):
                if op == "fusion" and callee not in fused_all:
                    fused_all.add(callee)
                    todo.append(callee)
    ops = [(op, rhs) for name in run for op, rhs in comps[name] if op not in FREE]
    by_op = Counter(op for op, _ in ops)
    conv_calls = sum(
        1 for op, rhs in ops if op == "custom-call" and "conv" in rhs.split("custom_call_target=")[-1][:60].lower()
    )
    fused_convs = sum(1 for name in fused_all for op, _ in comps[name] if op == "convolution")
    return {
        "ops": len(ops),
        "fusions": by_op["fusion"],
        "convolutions": by_op["convolution"] + fused_convs + conv_calls,
        "custom_calls": by_op["custom-call"],
        "while_loops": by_op["while"],
        "dots": by_op["dot"] + sum(1 for name in fused_all for op, _ in comps[name] if op == "dot"),
        "copies_transposes": by_op["copy"] + by_op["transpose"],
        "instructions": sum(len(v) for v in comps.values()),
        "fused_instructions": sum(1 for name in fused_all for op, _ in comps[name] if op != "parameter"),
        "by_opcode": dict(by_op.most_common()),
    }


def counts_of(fn, *args) -> dict:
    """hlo_counts of `fn` compiled for `args`, with the ops of its HLO before optimisation."""
    lowered = jax.jit(fn).lower(*args)
    rec = hlo_counts(lowered.compile().as_text())
    rec["lowered_ops"] = hlo_counts(lowered.as_text(dialect="hlo"))["ops"]
    return rec


def configs(setting: str) -> dict[str, tuple[ml_collections.ConfigDict, int]]:
    """{row name: (config, batch)} of a setting."""
    if setting == "celeba64":
        out = {}
        for name in ("cunet", "unet"):
            c = load_config_file(REPO / "configs" / "celeba64.py")
            c.model.name = name
            out[name] = (c, 16)
        return out
    from benchmarks.train_compare import MODELS, PRESETS

    p = SimpleNamespace(**PRESETS["cpu"])

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(",") if v)

    out = {}
    for row, (name, solver) in MODELS.items():
        c = load_config_file(REPO / "configs" / "mnist.py")
        c.data.image_size, c.model.name = p.image_size, name
        if solver:
            c.model.cunet.solver, c.model.cunet.ode_steps = solver, 1
        c.model.cunet.update(nf=p.cunet_nf, ch_mult=ints(p.cunet_ch_mult), attn_resolutions=ints(p.cunet_attn))
        c.model.unet.update(ch=p.unet_ch, ch_mult=ints(p.unet_ch_mult), attn_resolutions=ints(p.unet_attn))
        c.training.batch_size = p.batch
        out[row] = (c, p.batch)
    return out


def functions(config: ml_collections.ConfigDict, batch: int) -> dict:
    """{"train_step": (step, (state, x)), "forward": (apply, (params, x, t))} of a config's
    denoiser at `batch`: the functions unjitted, a fresh train state, fixed inputs."""
    model, tx = build_denoiser(config.model), make_optimizer(config.training)
    s, ch = config.data.image_size, config.data.channels
    x = jax.random.normal(jax.random.key(1), (batch, s, s, ch), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    state = jax.jit(lambda k: create_train_state(model, tx, config, k))(jax.random.key(0))
    schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    return {
        "train_step": (make_train_step(model, tx, schedule, config), (state, x)),
        "forward": (lambda p, x, t: model.apply({"params": p}, x, t), (state.params, x, t)),
    }


def measure(config: ml_collections.ConfigDict, batch: int) -> dict:
    """Parameters, GFLOP per image and the forward's and the training step's counts."""
    fns = functions(config, batch)
    step, (state, x) = fns["train_step"]
    apply, (params, _x, t) = fns["forward"]
    m = config.model[config.model.name]
    return {
        "model": config.model.name,
        "solver": f"{m.solver} x{m.ode_steps}" if config.model.name == "cunet" else None,
        "image_size": config.data.image_size,
        "channels": config.data.channels,
        "batch": batch,
        "params": int(sum(v.size for v in jax.tree.leaves(params))),
        "gflop_per_image": gflop(apply, params, x[:1], t[:1]),
        "train_step_gflop_per_image": gflop(step, state, x) / batch,
        "forward": counts_of(apply, params, x, t),
        "train_step": counts_of(step, state, x),
    }


def markdown(rec: dict) -> str:
    """The counts as a Markdown table."""
    rows = []
    for setting, models in rec["settings"].items():
        for row, r in models.items():
            for part in ("forward", "train_step"):
                k = r[part]
                gf = r["gflop_per_image"] if part == "forward" else r["train_step_gflop_per_image"]
                rows.append(
                    [
                        setting,
                        row,
                        f"{r['params'] / 1e6:.2f}",
                        part.replace("_", " "),
                        r["batch"],
                        f"{gf:.3f}",
                        k["ops"],
                        k["fusions"],
                        k["convolutions"],
                        k["custom_calls"],
                        k["while_loops"],
                        k["copies_transposes"],
                        k["instructions"],
                        k["lowered_ops"],
                        f"{k['ops'] / (gf * r['batch']):.1f}",
                    ]
                )
    return markdown_table(
        [
            "setting",
            "model",
            "M params",
            "function",
            "batch",
            "GFLOP / image",
            "ops",
            "fusions",
            "convolutions",
            "custom-calls",
            "while loops",
            "copies + transposes",
            "instructions",
            "ops before optimisation",
            "ops per GFLOP of the call",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> dict:
    """Counts every setting asked for and writes the JSON and the Markdown table beside it."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.op_counts", description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="benchmarks/results/op_counts.json")
    a = ap.parse_args(argv)
    settings = a.settings.split(",")
    bad = sorted(set(settings) - set(SETTINGS))
    if bad:
        ap.error(f"--settings: unknown {bad}; choose from {', '.join(SETTINGS)}")
    rec = {
        "settings": {},
        "backend": "cpu, one device",
        "flop_convention": "XLA cost_analysis flops of the module lowered for a CPU (2 per multiply-add)",
    }
    with jax.default_device(jax.devices("cpu")[0]):
        for setting in settings:
            rec["settings"][setting] = {}
            for row, (config, batch) in configs(setting).items():
                rec["settings"][setting][row] = r = measure(config, batch)
                print(
                    f"{setting} {row}: forward {r['forward']['ops']} ops, training step {r['train_step']['ops']} ops",
                    flush=True,
                )
    write_json(a.out, rec)
    table = markdown(rec)
    Path(a.out).with_suffix(".md").write_text(table + "\n")
    print(table)
    return rec


if __name__ == "__main__":
    main()
