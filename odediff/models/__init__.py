"""Both denoisers behind one interface: `build_denoiser(config.model)`."""

import ml_collections

from odediff.models.cunet import ODE_CONFIG_FIELDS, CUNet
from odediff.models.ode import RK4, SOLVERS, ODESettings, solve
from odediff.models.unet import UNet

DENOISERS = {"cunet": CUNet, "unet": UNet}


def build_denoiser(
    model_config: ml_collections.ConfigDict,
    out_channels: int | None = None,
    *,
    block_solver: str = "",
    block_steps: int = 0,
):
    """The module named by `model_config.name`, built from its sub-config.

    Call it as `apply({"params": p}, x, t)` with x (B, H, W, C) float32 and t (B,)
    int32, and for a class-conditional model (`num_classes` > 0) `labels` (B,) int32
    (num_classes, or None, is the null class); training adds `train=True,
    rngs={"dropout": key}`. `block_solver` / `block_steps` solve a cU-Net's ODE
    blocks otherwise than it was trained (see `with_block_solver`).
    """
    name = model_config.name
    if name not in DENOISERS:
        raise ValueError(f"unknown model.name {name!r}: use one of {sorted(DENOISERS)}")
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model_config[name].items()}
    if name == "cunet":
        fields["ode"] = ODESettings(
            **{ODE_CONFIG_FIELDS[k]: fields.pop(k) for k in list(fields) if k in ODE_CONFIG_FIELDS}
        )
    model = DENOISERS[name](out_channels=out_channels, num_classes=model_config.get("num_classes", 0), **fields)
    return with_block_solver(model, block_solver, block_steps)


def with_block_solver(model, solver: str = "", steps: int = 0):
    """`model`, a cU-Net, with every ODE block solved by `solver` ("euler", "heun",
    "midpoint", "rk4", ...) in `steps` fixed steps; "" / 0 keep the model's own. The
    solver has no params: the trained params apply unchanged, e.g. to sample with a
    cheaper or finer solve than training used. ValueError for any other model."""
    if not solver and not steps:
        return model
    if not isinstance(model, CUNet):
        raise ValueError(
            f"block_solver={solver!r}, block_steps={steps!r}: these solve the ODE blocks of "
            f"cU-Nets only, and this model is a {type(model).__name__}; leave them unset"
        )
    ode = model.ode.replace(solver=solver or model.ode.solver, steps=steps or model.ode.steps)
    return model.clone(parent=None, ode=ode)


def num_downsamples(model_config: ml_collections.ConfigDict) -> int:
    """How many times the denoiser halves the image: the size must be divisible by 2**this."""
    n = len(model_config[model_config.name].ch_mult)
    return n if model_config.name == "cunet" else n - 1


__all__ = [
    "CUNet",
    "UNet",
    "RK4",
    "SOLVERS",
    "DENOISERS",
    "ODESettings",
    "build_denoiser",
    "num_downsamples",
    "solve",
    "with_block_solver",
]
