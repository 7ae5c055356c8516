"""benchmarks/op_counts.py: counting a compiled module's ops, and the committed counts."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import op_counts
from helpers import REPO

MODULE = """HloModule m, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %e = f32[4]{0} exponential(%p)
  ROOT %m = f32[4]{0} multiply(%e, %p)
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[4]{0} get-tuple-element(%t), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %r = (s32[], f32[4]{0}) tuple(%j, %f)
}

%cond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %x)
  %w = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body
  %y = f32[4]{0} get-tuple-element(%w), index=1
  %c = f32[4]{0} custom-call(%y), custom_call_target="__onednn$convolution"
  %z = f32[] constant(0)
  %sum = f32[] reduce(%c, %z), dimensions={0}, to_apply=%add
  ROOT %b = f32[4]{0} broadcast(%sum), dimensions={}
}
"""


def test_op_counts_take_the_ops_of_the_entry_and_loops_not_of_fusions_or_reducers():
    c = op_counts.hlo_counts(MODULE)
    # entry: while, custom-call, reduce, broadcast; loop body: fusion, add; condition: compare
    assert c["ops"] == 7 and c["by_opcode"] == {
        "while": 1,
        "custom-call": 1,
        "reduce": 1,
        "broadcast": 1,
        "fusion": 1,
        "add": 1,
        "compare": 1,
    }
    assert (c["fusions"], c["while_loops"], c["custom_calls"], c["convolutions"]) == (1, 1, 1, 1)
    assert c["instructions"] == 26 and c["fused_instructions"] == 2


def test_op_counts_of_a_compiled_function_find_its_convolution_and_loop():
    def f(x, w):
        y = jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return jax.lax.fori_loop(
            0, jnp.int32(x.shape[0]) + (jnp.sum(x) > 0).astype(jnp.int32), lambda i, c: c * 1.01 + jnp.sin(c), y
        ).mean()

    c = op_counts.counts_of(f, jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))
    assert c["convolutions"] == 1 and c["while_loops"] == 1 and c["dots"] == 0
    assert c["ops"] >= c["fusions"] + c["while_loops"] >= 3
    assert c["lowered_ops"] > c["ops"]  # before fusion every elementwise op is its own


def test_op_counts_committed_for_both_settings_hold_every_model_and_count():
    rec = json.loads((REPO / "benchmarks" / "results" / "op_counts.json").read_text())
    assert {k: set(v) for k, v in rec["settings"].items()} == {
        "celeba64": {"cunet", "unet"},
        "mnist16": {"unet", "cunet_rk4", "cunet_heun"},
    }
    for models in rec["settings"].values():
        for r in models.values():
            assert r["params"] > 0 and 0 < r["gflop_per_image"] < r["train_step_gflop_per_image"]
            for part in ("forward", "train_step"):
                assert 0 < r[part]["fusions"] <= r[part]["ops"] < r[part]["instructions"]
                assert r[part]["convolutions"] > 0
            assert r["train_step"]["ops"] > r["forward"]["ops"]
    celeba = rec["settings"]["celeba64"]
    assert (celeba["cunet"]["batch"], celeba["cunet"]["solver"], celeba["unet"]["image_size"]) == (16, "rk4 x1", 64)
    assert "| celeba64 | cunet |" in (REPO / "benchmarks" / "results" / "op_counts.md").read_text()


def test_op_counts_refuse_an_unknown_setting_with_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        op_counts.main(["--settings", "celeba64,imagenet", "--out", str(tmp_path / "c.json")])
    assert e.value.code == 2 and "imagenet" in capsys.readouterr().err
