"""The DDPM U-Net of Ho et al. 2020, as in the original release."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from odediff.models.layers import GroupNorm, LabelEmbed, SelfAttention, TimeMLP

_zeros = nn.initializers.zeros  # Ho et al. zero-initialise each residual branch's last conv


def _group_norm(channels: int) -> GroupNorm:
    """Ho et al.'s 32 groups, or as many as divide the channels (a U-Net narrower than ch 32)."""
    return GroupNorm(num_groups=math.gcd(32, channels))


class ResBlock(nn.Module):
    out_ch: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        h = nn.Conv(self.out_ch, (3, 3))(nn.swish(_group_norm(x.shape[-1])(x)))
        h = h + nn.Dense(self.out_ch)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(_group_norm(self.out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=_zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), name="nin_shortcut")(x)
        return x + h


def _attention(x: jax.Array) -> jax.Array:
    return SelfAttention(num_heads=1, head_dim=x.shape[-1], norm="group32")(x)


class UNet(nn.Module):
    """ch, ch_mult, num_res_blocks, attention at the listed resolutions, dropout."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    remat: bool = False
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
        hs = [nn.Conv(self.ch, (3, 3))(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock_(self.ch * mult, self.dropout)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = _attention(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(nn.Conv(hs[-1].shape[-1], (3, 3), strides=(2, 2))(hs[-1]))
        h = ResBlock_(hs[-1].shape[-1], self.dropout)(hs[-1], temb, train)
        h = _attention(h)
        h = ResBlock_(h.shape[-1], self.dropout)(h, temb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock_(self.ch * mult, self.dropout)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = _attention(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(c, (3, 3))(h)
        h = nn.swish(_group_norm(h.shape[-1])(h))
        return nn.Conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=_zeros)(h)
