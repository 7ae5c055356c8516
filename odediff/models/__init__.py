"""Both denoisers behind one interface: `build_denoiser(config.model)`."""

import ml_collections

from odediff.models.cunet import ODE_CONFIG_FIELDS, CUNet
from odediff.models.ode import SOLVERS, RK4, ODESettings, solve
from odediff.models.unet import UNet

DENOISERS = {"cunet": CUNet, "unet": UNet}


def build_denoiser(model_config: ml_collections.ConfigDict, out_channels: int | None = None):
    """The module named by `model_config.name`, built from its sub-config.

    Call it as `apply({"params": p}, x, t)` with x (B, H, W, C) float32 and t (B,)
    int32, and for a class-conditional model (`num_classes` > 0) `labels` (B,) int32
    (num_classes, or None, is the null class); training adds `train=True,
    rngs={"dropout": key}`.
    """
    name = model_config.name
    if name not in DENOISERS:
        raise ValueError(f"unknown model.name {name!r}: use one of {sorted(DENOISERS)}")
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model_config[name].items()}
    if name == "cunet":
        fields["ode"] = ODESettings(**{ODE_CONFIG_FIELDS[k]: fields.pop(k) for k in list(fields)
                                       if k in ODE_CONFIG_FIELDS})
    return DENOISERS[name](out_channels=out_channels, num_classes=model_config.get("num_classes", 0), **fields)


def num_downsamples(model_config: ml_collections.ConfigDict) -> int:
    """How many times the denoiser halves the image: the size must be divisible by 2**this."""
    n = len(model_config[model_config.name].ch_mult)
    return n if model_config.name == "cunet" else n - 1


__all__ = ["CUNet", "UNet", "RK4", "SOLVERS", "DENOISERS", "ODESettings", "build_denoiser", "num_downsamples",
           "solve"]
