"""The continuous U-Net of Calvo-Ordonez et al.: an ODE block per level, every one time-conditioned."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from odediff.models.layers import Conv, LabelEmbed, SelfAttention, TimeMLP, make_norm, softplus
from odediff.models.ode import ODEBlock, ODESettings

# config.model.cunet's names for the ODESettings fields.
ODE_CONFIG_FIELDS = {
    "solver": "solver",
    "ode_steps": "steps",
    "ode_mode": "mode",
    "rtol": "rtol",
    "atol": "atol",
    "adjoint": "adjoint",
    "max_ode_steps": "max_steps",
    "remat": "remat",
}


def _resize(x: jax.Array, factor: float) -> jax.Array:
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, int(h * factor), int(w * factor), c), "bilinear")


class CUNet(nn.Module):
    """Stem -> encoder ODE blocks at nf*ch_mult -> bottleneck at 2x the last -> decoder.

    The stem lifts the image to an augmented 2*nf-channel state ([position |
    velocity] in the paper's reading); each block integrates a first-order field on
    the whole state, which is what the authors' release computes. Every block is
    solved as `ode` says; the solver has no params, so the params of one
    serve a copy with other settings (`odediff.models.with_block_solver`).
    """

    nf: int = 16
    ch_mult: Sequence[int] = (2, 4, 8, 16)
    attn_resolutions: Sequence[int] = (8,)
    time_embed_dim: int = 64
    norm: str = "group"
    field: str = "residual"
    num_heads: int = 4
    head_dim: int = 32
    ode: ODESettings = ODESettings()
    stem_norm: bool = False
    num_classes: int = 0
    out_channels: int | None = None

    def _block(self, channels: int) -> ODEBlock:
        return ODEBlock(channels, self.norm, self.field, self.ode)

    def _attend(self, h: jax.Array) -> jax.Array:
        if h.shape[1] in self.attn_resolutions:
            h = SelfAttention(self.num_heads, self.head_dim, norm="rms")(h)
        return h

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        """Computes in x's dtype (bfloat16 x and params: bfloat16 activations and ODE states)."""
        del train  # no dropout or batch statistics: the fields must stay pure
        temb = TimeMLP(self.time_embed_dim, 4 * self.time_embed_dim, self.time_embed_dim, "softplus", x.dtype)(t)
        if self.num_classes:  # every ODE block's FiLM sees the class through temb
            temb = temb + LabelEmbed(self.num_classes, self.time_embed_dim)(labels, x.shape[0])
        temb = softplus(temb).astype(x.dtype)
        # The release normalises x_t itself first, and the paper's stem normalises the
        # conv's features too: both erase each image's mean and scale, which a denoiser
        # needs (samples came out with grey backgrounds). `stem_norm` keeps the second.
        h = softplus(Conv(self.nf, (3, 3))(x))
        widths = [self.nf * m for m in self.ch_mult]
        if self.stem_norm:
            h = make_norm(self.norm, self.nf)(h)
        h = softplus(Conv(widths[0], (1, 1))(h))

        skips = []
        for width, next_width in zip(widths, widths[1:] + [2 * widths[-1]]):
            h = self._attend(self._block(width)(h, temb))
            skips.append(h)
            h = _resize(Conv(next_width, (1, 1))(h), 0.5)
        h = self._block(h.shape[-1])(h, temb)
        for skip in reversed(skips):
            h = jnp.concatenate([_resize(h, 2.0), skip], axis=-1)
            h = Conv(skip.shape[-1], (1, 1))(h)
            h = self._attend(self._block(skip.shape[-1])(h, temb))
        out = Conv(self.out_channels or x.shape[-1], (1, 1), kernel_init=nn.initializers.zeros)
        return out(h)
