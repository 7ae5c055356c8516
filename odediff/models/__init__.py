"""Both denoisers behind one interface: `build_denoiser(config.model)`."""

import ml_collections

from odediff.models.cunet import CUNet
from odediff.models.ode import SOLVERS, RK4, solve
from odediff.models.unet import UNet

DENOISERS = ("cunet", "unet")


def build_denoiser(model_config: ml_collections.ConfigDict, out_channels: int | None = None):
    """A Flax module called as `apply({"params": p}, x, t)` with x (B, H, W, C), t (B,) int32."""
    c = model_config
    if c.name == "unet":
        return UNet(
            ch=c.ch, ch_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
            attn_resolutions=tuple(c.attn_resolutions), dropout=c.dropout, out_channels=out_channels,
        )
    if c.name == "cunet":
        return CUNet(
            nf=c.ch, ch_mult=tuple(c.ch_mult), attn_resolutions=tuple(c.attn_resolutions),
            time_embed_dim=c.time_embed_dim, norm=c.norm, num_heads=c.num_heads, head_dim=c.head_dim,
            solver=c.solver, ode_steps=c.ode_steps, ode_mode=c.ode_mode, rtol=c.rtol, atol=c.atol,
            adjoint=c.adjoint, max_ode_steps=c.max_ode_steps, out_channels=out_channels,
        )
    raise ValueError(f"unknown model.name {c.name!r}: use one of {DENOISERS}")


def num_downsamples(model_config: ml_collections.ConfigDict) -> int:
    """How many times the denoiser halves the image: the size must be divisible by 2**this."""
    n = len(model_config.ch_mult)
    return n if model_config.name == "cunet" else n - 1


__all__ = ["CUNet", "UNet", "RK4", "SOLVERS", "DENOISERS", "build_denoiser", "num_downsamples", "solve"]
