"""The DDPM U-Net of Ho et al. 2020, as in the original release."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from odediff.models.layers import Conv, GroupNorm, LabelEmbed, SelfAttention, TimeMLP, default_num_groups

_zeros = nn.initializers.zeros  # Ho et al. zero-initialise each residual branch's last conv


def num_groups(channels: int, norm_groups: int) -> int:
    """Group-norm groups over `channels`: gcd(norm_groups, channels), or with norm_groups 0 at
    most 32 of at least 4 channels each (`default_num_groups`). 0 and 32 both give Ho et al.'s
    32 from ch 128; narrower, 32 makes groups of one channel, which erase the timestep a
    residual block adds."""
    return math.gcd(norm_groups, channels) if norm_groups else default_num_groups(channels)


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        norm = lambda c: GroupNorm(num_groups(c, self.norm_groups))
        h = Conv(self.out_ch, (3, 3))(nn.swish(norm(x.shape[-1])(x)))
        h = h + nn.Dense(self.out_ch)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(norm(self.out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.out_ch, (3, 3), kernel_init=_zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = Conv(self.out_ch, (1, 1), name="nin_shortcut")(x)
        return x + h


def _attention(x: jax.Array, norm_groups: int) -> jax.Array:
    c = x.shape[-1]
    return SelfAttention(num_heads=1, head_dim=c, norm="group", num_groups=num_groups(c, norm_groups))(x)


class UNet(nn.Module):
    """ch, ch_mult, num_res_blocks, attention at the listed resolutions, dropout; group-norm
    groups by `num_groups(channels, norm_groups)`."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    remat: bool = False
    norm_groups: int = 0
    num_classes: int = 0
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        """Computes in x's dtype (bfloat16 x and params: bfloat16 activations)."""
        temb = TimeMLP(self.ch, 4 * self.ch, 4 * self.ch, dtype=x.dtype)(t)
        if self.num_classes:
            temb = temb + LabelEmbed(self.num_classes, 4 * self.ch)(labels, x.shape[0])
        temb = temb.astype(x.dtype)
        # rematerialised blocks keep their names, so checkpoints load either way
        block_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        count = iter(range(1 << 20))
        ResBlock_ = lambda *a: block_cls(*a, name=f"ResBlock_{next(count)}")  # noqa: N806
        hs = [Conv(self.ch, (3, 3))(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock_(self.ch * mult, self.dropout, self.norm_groups)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = _attention(h, self.norm_groups)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(Conv(hs[-1].shape[-1], (3, 3), strides=(2, 2))(hs[-1]))
        h = ResBlock_(hs[-1].shape[-1], self.dropout, self.norm_groups)(hs[-1], temb, train)
        h = _attention(h, self.norm_groups)
        h = ResBlock_(h.shape[-1], self.dropout, self.norm_groups)(h, temb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock_(self.ch * mult, self.dropout, self.norm_groups)(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
                if h.shape[1] in self.attn_resolutions:
                    h = _attention(h, self.norm_groups)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = Conv(c, (3, 3))(h)
        h = nn.swish(GroupNorm(num_groups(h.shape[-1], self.norm_groups))(h))
        return Conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=_zeros)(h)
