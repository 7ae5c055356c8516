"""benchmarks/op_profile.py: the convolutions' FLOPs read from the HLO, and op time from a trace."""

import subprocess

import jax
import jax.numpy as jnp
import pytest

from benchmarks import op_counts, op_profile


def _f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sin(y).mean(axis=(1, 2))


def test_each_op_is_classified_and_the_flops_of_a_convolution_and_a_product_are_read_from_their_shapes():
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5))
    conv_only = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    kinds = op_profile.classify(op_counts.instructions(conv_only.lower(x, w).compile().as_text()))
    (conv,) = [k for k in kinds.values() if k[0] == "conv/dot"]
    assert conv[1] * 1e9 == 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)  # output elements x the input window, 2 per MAC
    a, b = jnp.ones((6, 7, 5)), jnp.ones((5, 3))
    kinds = op_profile.classify(op_counts.instructions(jax.jit(jnp.matmul).lower(a, b).compile().as_text()))
    (dot,) = [k for k in kinds.values() if k[0] == "conv/dot"]
    assert dot[1] * 1e9 == 2 * (6 * 7 * 3) * 5
    kinds = op_profile.classify(op_counts.instructions(jax.jit(_f).lower(x, w).compile().as_text()))
    assert {k[0] for k in kinds.values()} >= {"conv/dot", "reduction"}
    assert all(k[0] in op_profile.CATEGORIES for k in kinds.values())


def test_a_traced_call_gives_each_category_its_op_time_and_names_the_longest_ops(tmp_path):
    x, w = jnp.ones((4, 16, 16, 8)), jnp.ones((3, 3, 8, 8))
    r = op_profile.profile(jax.jit(_f).lower(x, w).compile(), (x, w), calls=2, trace_dir=tmp_path)
    cats = r["categories"]
    assert set(cats) == set(op_profile.CATEGORIES)
    assert cats["conv/dot"]["ms"] > 0 and cats["conv/dot"]["ops"] == 1
    assert abs(cats["conv/dot"]["conv_gflop"] * 1e9 - 2 * (4 * 16 * 16 * 8) * (3 * 3 * 8)) < 1
    assert abs(r["op_ms"] - sum(c["ms"] for c in cats.values())) < 1e-9
    assert r["top_ops"][0]["ms"] == max(o["ms"] for o in r["top_ops"]) and r["ops_run"] >= 2
    assert any(o["category"] == "conv/dot" and "conv_general_dilated" in o["source"] for o in r["top_ops"])


def test_ratios_divide_each_model_by_the_unet_with_either_convolution():
    def rec(ms, lax_ms, gflop):
        cats = {c: {"ms": ms / 4, "ops": 1, "conv_gflop": 0} for c in op_profile.CATEGORIES}
        part = {"wall_ms": ms, "lax_conv_wall_ms": lax_ms, "gflop": gflop, "op_ms": ms, "categories": cats}
        return {"train_step": part, "forward": part}

    r = op_profile.ratios({"unet": rec(100.0, 100.0, 10.0), "cunet_heun": rec(30.0, 60.0, 2.0)})
    assert set(r) == {"cunet_heun"}
    step = {k: round(v, 6) for k, v in r["cunet_heun"]["train_step"].items()}
    assert (step["time"], step["flops"], step["time_over_flops"], step["lax_conv_time_over_flops"]) == (
        0.3,
        0.2,
        1.5,
        3.0,
    )


def test_the_lax_build_convolves_where_the_library_multiplies():
    from helpers import tiny_config
    from odediff.models import build_denoiser

    c = tiny_config("cunet")
    c.data.image_size = 4  # the bottom block at 2x2, smaller than its 3x3 kernel
    x, t = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32)

    def convolutions() -> int:
        model = build_denoiser(c.model)
        params = jax.eval_shape(model.init, jax.random.key(0), x, t)
        return jax.jit(model.apply).lower(params, x, t).as_text().count("stablehlo.convolution")

    with op_profile.lax_convolutions():
        lax_build = convolutions()
    assert lax_build > convolutions() > 0


XSPACE = """
planes {
  id: 1
  name: "/device:GPU:0"
  lines {
    id: 1
    name: "Stream #7(Compute)"
    events { metadata_id: 1 offset_ps: 0 duration_ps: 3000000 stats { metadata_id: 1 str_value: "fusion.3" } }
    events { metadata_id: 1 offset_ps: 4000000 duration_ps: 1000000 stats { metadata_id: 1 str_value: "fusion.3" } }
    events { metadata_id: 2 offset_ps: 6000000 duration_ps: 2000000 }
  }
  lines {
    id: 2
    name: "XLA Ops"
    events { metadata_id: 3 offset_ps: 0 duration_ps: 5000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "loop_multiply_fusion" } }
  event_metadata { key: 2 value { id: 2 name: "sm90_xmma_gemm_f32" } }
  event_metadata { key: 3 value { id: 3 name: "fusion.3" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
}
planes {
  id: 2
  name: "/host:CPU"
  lines {
    id: 1
    name: "python"
    events { metadata_id: 1 offset_ps: 0 duration_ps: 9000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "fusion.3" } }
}
"""


def test_on_a_device_the_kernels_count_by_their_hlo_op_and_library_kernels_apart():
    device, events = op_profile.op_events(jax.profiler.ProfileData.from_text_proto(XSPACE))
    assert device and sorted(e[0] for e in events) == ["fusion.3", "fusion.3", "sm90_xmma_gemm_f32"]
    r = op_profile.summarise(events, {"fusion.3": ("elementwise", 0.0, "UNet/mul")}, calls=2, device=True)
    assert r["categories"]["elementwise"]["ms"] == pytest.approx(0.004 / 2) and r["ops_run"] == 1.0  # 4,000 ns, 2 calls
    assert r["top_ops"][0]["op"] == "fusion.3" and r["top_ops"][0]["source"] == "UNet/mul"
    assert (
        r["unattributed"]["ms"] == pytest.approx(0.002 / 2)
        and r["unattributed"]["top"][0]["kernel"] == "sm90_xmma_gemm_f32"
    )


def test_a_setting_takes_another_batch_and_compute_dtype_and_bad_options_are_usage_errors(capsys):
    cfgs = op_profile.setting_configs("celeba64", batch=128, compute_dtype="bfloat16")
    assert set(cfgs) == {"cunet", "unet"}
    assert all(b == 128 and c.training.compute_dtype == "bfloat16" for c, b in cfgs.values())
    assert {r: b for r, (_c, b) in op_profile.setting_configs("mnist16").items()} == {
        "unet": 64,
        "cunet_rk4": 64,
        "cunet_heun": 64,
    }
    for argv, says in [
        (["--lax_conv", "--no_lax"], "pass one of them"),
        (["--models", "cunet_heun"], "unet missing"),
        (["--setting", "celeba64", "--models", "unet,cunet_heun"], "cunet_heun"),
    ]:
        with pytest.raises(SystemExit) as stop:
            op_profile.main(argv)
        assert stop.value.code == 2 and says in capsys.readouterr().err


def test_the_profile_part_of_gpu_check_is_valid_bash_and_runs_the_module_at_celeba64():
    from helpers import REPO

    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    assert "-m benchmarks.op_profile --setting celeba64 --batch 128 --compute_dtype bfloat16" in script.read_text()
