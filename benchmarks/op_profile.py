"""Where each denoiser's time goes, op by op, and its time ratio to the U-Net beside its FLOPs ratio.

python -m benchmarks.op_profile [--setting mnist16|celeba64] [--models ROW,...] [--batch N]
    [--compute_dtype float32|bfloat16] [--repeats 10] [--calls 5] [--lax_conv | --no_lax]
    [--out benchmarks/results/op_profile]

At a setting of benchmarks.op_counts (by default mnist16, the MNIST comparison's widths:
16x16x1, batch 64; the U-Net at ch 32, the cU-Net at nf 8 with Heun x1 and with RK4 x1;
celeba64: configs/celeba64.py), for the training step and the forward (one sampling step's
evaluation), each compiled for one device:
- wall ms: the median of `--repeats` calls, every model's function called in turn, each also
  built with `lax.conv_general_dilated` at every size (the library before its small-image
  convolution, `odediff.models.layers.conv_general_dilated`), and the largest difference of the
  forward's output, and of the training step's loss and gradient norm, from that build's,
  relative to its largest value (the params perturbed off the zero-initialised output layers);
- GFLOP: XLA's cost analysis of the call built with lax convolutions (the library's form of a
  convolution on an image smaller than its kernel also multiplies the zero padding); with
  `--no_lax` (on a GPU, say) the library's build alone, its FLOPs as compiled;
- a `jax.profiler` trace of `--calls` calls, each XLA op's events summed over the runtime's
  threads (CPU time, so a call's op time can exceed its wall time when ops run in parallel; on
  a GPU or TPU its kernels' time by their `hlo_op`, library kernels no op names apart) and
  sorted into categories by the op's HLO: conv/dot (a convolution or matrix product, or a
  fusion around one, with its GFLOP from the shapes; a library call has none), reduction,
  copy/transpose (data movement only), elementwise (any other fusion or op);
- threads busy: op time / wall time, how many cores the call keeps busy on average;
- the ten ops that take longest, with the layer they come from (the HLO's op_name).
Writes op_profile.json and op_profile.md under --out.
"""

import argparse
import contextlib
import math
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from benchmarks.common import markdown_table, write_json
from benchmarks.op_counts import SETTINGS, configs, functions, instructions
from benchmarks.paper_table import alternated_medians, gflop
from odediff.models import cunet, ode, unet

CATEGORIES = ("conv/dot", "reduction", "copy/transpose", "elementwise")
CONTROL = {"while", "call", "conditional", "parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
MOVES = {"copy", "transpose", "bitcast", "parameter", "reshape", "broadcast", "slice", "concatenate", "pad"}
_TYPE = re.compile(r"^\w+\[([\d,]*)\]")
_OPERANDS = re.compile(r"^[^(]*\(([^)]*)\)")


def _dims(rhs: str) -> list[int]:
    m = _TYPE.match(rhs)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _operands(rhs: str) -> list[str]:
    return [o.strip().lstrip("%") for o in _OPERANDS.match(rhs.split(" ", 1)[1]).group(1).split(",")]


def conv_gflop(name: str, instrs: dict) -> float:
    """GFLOP of one convolution or dot instruction: 2 x output elements x the products summed
    into each (the kernel's input window, the contracted dimensions)."""
    _comp, op, rhs = instrs[name]
    out, operands = _dims(rhs), _operands(rhs)
    if op == "dot":
        lhs = _dims(instrs[operands[0]][2])
        contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rhs).group(1)
        return 2 * math.prod(out) * math.prod(lhs[int(d)] for d in contracted.split(",") if d) / 1e9
    kernel = _dims(instrs[operands[1]][2])
    labels = re.search(r"dim_labels=\w+_(\w+)->", rhs).group(1)
    return 2 * math.prod(out) * (math.prod(kernel) // kernel[labels.index("o")]) / 1e9


def classify(instrs: dict) -> dict[str, tuple[str, float, str]]:
    """{op name: (category, GFLOP of its convolutions and dots, source layer)} for every op that
    runs as a kernel of its own; the source is the HLO's op_name of the op or of the first
    convolution or op fused into it."""
    by_comp: dict[str, list[str]] = defaultdict(list)
    for name, (comp, _op, _rhs) in instrs.items():
        by_comp[comp].append(name)
    inside = {c for _comp, _op, rhs in instrs.values() for c in re.findall(r"\b(?:calls|to_apply)=%?([\w.\-]+)", rhs)}
    out = {}
    for name, (comp, op, rhs) in instrs.items():
        if op in CONTROL or comp in inside:  # fused ops and reducers run inside another op
            continue
        inner = [name]
        if op == "fusion":
            inner = by_comp.get(re.search(r"calls=%?([\w.\-]+)", rhs).group(1), [])
        opcodes = {instrs[n][1] for n in inner}
        convs = [n for n in inner if instrs[n][1] in ("convolution", "dot")]
        target = rhs.split("custom_call_target=")[-1][:60].lower() if op == "custom-call" else ""
        if convs or "conv" in target:
            kind = "conv/dot"
        elif opcodes & {"reduce", "reduce-window"}:
            kind = "reduction"
        elif opcodes <= MOVES:
            kind = "copy/transpose"
        else:
            kind = "elementwise"
        sources = [_source(instrs[n][2]) for n in [name, *convs, *inner]]
        out[name] = (kind, sum(conv_gflop(n, instrs) for n in convs), next((s for s in sources if s), ""))
    return out


def _source(rhs: str) -> str:
    """The layer an op comes from, as its HLO metadata names it, less jit's prefix."""
    m = re.search(r'op_name="([^"]*)"', rhs)
    return re.sub(r"^jit\([^)]*\)/", "", m.group(1)) if m else ""


# Lines a profiler may derive from a device's kernel events: counted once, on the kernels' own lines.
DERIVED_LINES = {
    "XLA Modules",
    "XLA Ops",
    "XLA TraceMe",
    "Steps",
    "Framework Ops",
    "Framework Name Scope",
    "Source code",
}


def op_events(data: "jax.profiler.ProfileData") -> tuple[bool, list[tuple[str, str, float]]]:
    """(whether they come from a device, [(op name, event name, ns)]): the kernel events of the
    device planes (a GPU's or TPU's) where there are any, else every event of the CPU runtime's
    threads. An event's op is its `hlo_op` stat where it has one, else its own name."""
    device = [
        p for p in data.planes if p.name.startswith("/device:") and any(True for ln in p.lines for _ in ln.events)
    ]
    planes = device or [data.find_plane_with_name("/host:CPU")]
    out = []
    for plane in planes:
        for line in plane.lines:
            if line.name in DERIVED_LINES:
                continue
            for e in line.events:
                out.append((str(dict(e.stats).get("hlo_op", e.name)), e.name, e.duration_ns))
    return bool(device), out


def summarise(events: list[tuple[str, str, float]], kinds: dict, calls: int, device: bool) -> dict:
    """Op time per call by category, the ten longest ops and, on a device, the time of kernels
    that no op of the module names (library calls) with the ten longest of those."""
    ns, count, other_ns, other_count = Counter(), Counter(), Counter(), Counter()
    for op, name, dur in events:
        if op in kinds:
            ns[op] += dur
            count[op] += 1
        elif device:
            other_ns[name] += dur
            other_count[name] += 1
    ms = {n: v / 1e6 / calls for n, v in ns.items()}
    cats = {c: {"ms": 0.0, "ops": 0.0, "conv_gflop": 0.0} for c in CATEGORIES}
    for n, v in ms.items():
        c = cats[kinds[n][0]]
        c["ms"] += v
        c["ops"] += count[n] / calls
        c["conv_gflop"] += kinds[n][1] * count[n] / calls
    total = sum(ms.values())
    top = sorted(ms, key=ms.get, reverse=True)[:10]
    rec = {
        "op_ms": total,
        "ops_run": sum(count.values()) / calls,
        "categories": cats,
        "top_ops": [
            {
                "op": n,
                "category": kinds[n][0],
                "ms": ms[n],
                "share": ms[n] / total,
                "gflop": kinds[n][1],
                "source": kinds[n][2],
            }
            for n in top
        ],
    }
    if device:
        rec["unattributed"] = {
            "ms": sum(other_ns.values()) / 1e6 / calls,
            "kernels_run": sum(other_count.values()) / calls,
            "top": [
                {"kernel": k, "ms": v / 1e6 / calls, "runs": other_count[k] / calls}
                for k, v in other_ns.most_common(10)
            ],
        }
    return rec


def profile(compiled, args: tuple, calls: int, trace_dir: Path) -> dict:
    """Op time per call of a compiled function, by category, with its ten longest ops."""
    kinds = classify(instructions(compiled.as_text()))
    jax.block_until_ready(compiled(*args))
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
    (path,) = list(trace_dir.rglob("*.xplane.pb"))
    device, events = op_events(jax.profiler.ProfileData.from_file(str(path)))
    return summarise(events, kinds, calls, device)


def _functions(config, batch: int) -> dict:
    """op_counts.functions jitted, the params perturbed off the zero-initialised output layers."""
    out = {}
    for part, (fn, (first, *rest)) in functions(config, batch).items():
        params = first.params if part == "train_step" else first
        flat, unravel = ravel_pytree(params)
        params = unravel(flat + 0.1 * jax.random.normal(jax.random.key(2), flat.shape))
        out[part] = (jax.jit(fn), (first.replace(params=params) if part == "train_step" else params, *rest))
    return out


@contextlib.contextmanager
def lax_convolutions():
    """The denoisers built, while inside, with flax's `nn.Conv` (`lax.conv_general_dilated` at
    every size): the library as it was before `odediff.models.layers.conv_general_dilated`."""
    with contextlib.ExitStack() as stack:
        for module in (ode, unet, cunet):
            stack.enter_context(mock.patch.object(module, "Conv", nn.Conv))
        yield


def _compile(config, batch: int, part: str, lax_conv: bool):
    """(compiled function, its arguments, GFLOP as XLA counts it lowered for a CPU) of one model's part."""
    with lax_convolutions() if lax_conv else contextlib.nullcontext():
        fn, args = _functions(config, batch)[part]
        return fn.lower(*args).compile(), args, gflop(fn, *args)


def setting_configs(setting: str, batch: int = 0, compute_dtype: str = "") -> dict:
    """{row: (config, batch)} of an op_counts setting, with another batch and compute dtype if given."""
    out = {}
    for row, (config, default_batch) in configs(setting).items():
        if compute_dtype:
            config.training.compute_dtype = compute_dtype
        out[row] = (config, batch or default_batch)
    return out


def measure(
    cfgs: dict,
    models: list[str],
    repeats: int,
    calls: int,
    trace_root: Path,
    profile_lax: bool = False,
    lax: bool = True,
) -> dict:
    """Per model and function, side by side: the wall time with the library's convolutions and
    with `lax.conv_general_dilated` everywhere (outputs compared), the FLOPs as XLA counts them for
    the latter (what the convolutions compute, no products with padding), and the op profile of
    the library's build (of the lax one with `profile_lax`). Without `lax`, the library's build
    alone, its FLOPs as compiled."""
    rec = {}
    for part in ("train_step", "forward"):
        ours = {m: _compile(*cfgs[m], part, lax_conv=False) for m in models}
        lax_ = {m: _compile(*cfgs[m], part, lax_conv=True) for m in models} if lax else {}
        calls_ = {
            f"{m}/{k}": (lambda c=c[0], a=c[1]: c(*a)) for k, d in (("ours", ours), ("lax", lax_)) for m, c in d.items()
        }
        walls = alternated_medians(calls_, repeats)
        for m, (c, a, gflop_compiled) in ours.items():
            diff = None
            if lax:
                checked = (lambda out: out[1]) if part == "train_step" else (lambda out: out)  # loss, grad norm
                diff = jax.tree.map(
                    lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))),
                    checked(c(*a)),
                    checked(lax_[m][0](*a)),
                )
            r = profile(lax_[m][0] if profile_lax else c, a, calls, trace_root / f"{m}_{part}")
            conv = r["categories"]["conv/dot"]
            params = a[0] if part == "forward" else a[0].params
            rec.setdefault(m, {"params": int(sum(v.size for v in jax.tree.leaves(params)))})
            wall = walls[f"{m}/ours"] * 1e3
            lax_wall = walls[f"{m}/lax"] * 1e3 if lax else None
            rec[m][part] = {
                "batch": int(a[1].shape[0]),
                "wall_ms": wall,
                "lax_conv_wall_ms": lax_wall,
                "max_rel_diff_to_lax_conv": max(jax.tree.leaves(diff)) if lax else None,
                "gflop": lax_[m][2] if lax else gflop_compiled,
                "gflop_as_compiled": gflop_compiled,
                "conv_gflop": conv["conv_gflop"],
                "profiled": "lax convolutions" if profile_lax else "library",
                "threads_busy": r["op_ms"] / (lax_wall if profile_lax else wall),
                "conv_gflop_per_s": conv["conv_gflop"] / (conv["ms"] / 1e3) if conv["ms"] else None,
                **r,
            }
    return rec


def ratios(rec: dict, base: str = "unet") -> dict:
    """Each model's time, FLOPs and category times over the base model's, per function."""
    out = {}
    for m, r in rec.items():
        if m == base:
            continue
        out[m] = {}
        for part in ("train_step", "forward"):
            a, b = r[part], rec[base][part]
            time_ratio, flop_ratio = a["wall_ms"] / b["wall_ms"], a["gflop"] / b["gflop"]
            out[m][part] = {
                "time": time_ratio,
                "flops": flop_ratio,
                "time_over_flops": time_ratio / flop_ratio,
                "lax_conv_time_over_flops": a["lax_conv_wall_ms"] / b["lax_conv_wall_ms"] / flop_ratio
                if a["lax_conv_wall_ms"]
                else None,
                "op_time": a["op_ms"] / b["op_ms"],
                **{
                    c: a["categories"][c]["ms"] / b["categories"][c]["ms"]
                    for c in CATEGORIES
                    if b["categories"][c]["ms"]
                },
            }
    return out


def markdown(rec: dict, rat: dict) -> str:
    """Per model and function: the wall time, the op time by category and the ratios to the U-Net."""
    rows = []
    for m, r in rec.items():
        for part in ("train_step", "forward"):
            p = r[part]
            cats = p["categories"]
            ra = rat.get(m, {}).get(part)
            rows.append(
                [
                    m,
                    part.replace("_", " "),
                    f"{p['wall_ms']:.1f}",
                    f"{p['lax_conv_wall_ms']:.1f}" if p["lax_conv_wall_ms"] else "",
                    f"{p['gflop']:.2f}",
                    f"{p['threads_busy']:.2f}",
                    f"{p['ops_run']:.0f}",
                    *(f"{cats[c]['ms']:.1f} ({cats[c]['ms'] / p['op_ms']:.0%})" for c in CATEGORIES),
                    f"{p['conv_gflop_per_s']:.1f}" if p["conv_gflop_per_s"] else "",
                    f"{ra['time']:.3f} / {ra['flops']:.3f} = {ra['time_over_flops']:.2f}" if ra else "",
                    f"{ra['lax_conv_time_over_flops']:.2f}" if ra and ra["lax_conv_time_over_flops"] else "",
                ]
            )
    head = ["model", "function", "wall ms", "wall ms, lax convolutions", "GFLOP", "threads busy", "ops run"]
    head += [f"{c} op ms" for c in CATEGORIES] + [
        "conv/dot GFLOP/s of op time",
        "time / FLOPs ratio to the U-Net",
        "the same, lax convolutions",
    ]
    lines = [markdown_table(head, rows), ""]
    for m, r in rec.items():
        for part in ("train_step", "forward"):
            lines.append(f"Longest ops, {m} {part.replace('_', ' ')}:")
            lines.append("")
            lines.append(
                markdown_table(
                    ["op", "category", "ms", "share", "GFLOP", "source"],
                    [
                        [
                            o["op"],
                            o["category"],
                            f"{o['ms']:.2f}",
                            f"{o['share']:.1%}",
                            f"{o['gflop']:.3f}",
                            o["source"],
                        ]
                        for o in r[part]["top_ops"]
                    ],
                )
            )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measures the models asked for and writes the JSON and the Markdown tables."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="mnist16", choices=SETTINGS)
    ap.add_argument("--models", default="", help="rows of the setting (default: all of them)")
    ap.add_argument("--batch", type=int, default=0, help="default: the setting's")
    ap.add_argument("--compute_dtype", default="", choices=("", "float32", "bfloat16"), help="default: the config's")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/op_profile")
    ap.add_argument("--lax_conv", action="store_true", help="profile the build with lax convolutions at every size")
    ap.add_argument("--no_lax", action="store_true", help="time and profile the library's build alone")
    a = ap.parse_args(argv)
    if a.lax_conv and a.no_lax:
        ap.error("--lax_conv profiles the lax build, which --no_lax leaves out: pass one of them")
    cfgs = setting_configs(a.setting, a.batch, a.compute_dtype)
    models = a.models.split(",") if a.models else list(cfgs)
    bad = sorted(set(models) - set(cfgs))
    if bad or "unet" not in models:
        ap.error(f"--models: {bad or 'unet missing'}; choose from {', '.join(cfgs)}, the U-Net among them")
    out = Path(a.out)
    with tempfile.TemporaryDirectory() as traces:
        rec = measure(cfgs, models, a.repeats, a.calls, Path(traces), profile_lax=a.lax_conv, lax=not a.no_lax)
    rat = ratios(rec)
    payload = {"setting": a.setting, "backend": f"{jax.default_backend()}, one device", "repeats": a.repeats}
    payload.update(calls=a.calls, compute_dtype=cfgs["unet"][0].training.compute_dtype)
    write_json(out / "op_profile.json", {**payload, "models": rec, "ratios_to_unet": rat})
    (out / "op_profile.md").write_text(markdown(rec, rat) + "\n")
    print(markdown(rec, rat))
    return rec


if __name__ == "__main__":
    main()
