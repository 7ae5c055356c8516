"""Layers shared by both denoisers: time embedding, norms, attention."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("group", "instance")


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """The sinusoidal embedding of Ho et al. (as in the DDPM release), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _num_groups(channels: int) -> int:
    """Largest divisor of `channels` not above min(32, channels // 4): 8 groups at 32 channels."""
    limit = max(1, min(32, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Group norm (the paper's figure) or instance norm (the authors' release)."""
    if kind == "group":
        return nn.GroupNorm(num_groups=_num_groups(channels))
    if kind == "instance":
        return nn.GroupNorm(num_groups=channels)
    raise ValueError(f"unknown norm {kind!r}: use one of {NORMS}")


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels with a residual; `norm` is "rms" or "group32"."""

    num_heads: int
    head_dim: int
    norm: str = "rms"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = nn.RMSNorm()(x) if self.norm == "rms" else nn.GroupNorm(num_groups=32)(x)
        y = y.reshape(b, h * w, c)
        q, k, v = (
            nn.DenseGeneral((self.num_heads, self.head_dim), name=n)(y) for n in ("q", "k", "v")
        )
        y = nn.dot_product_attention(q, k, v)
        y = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, name="out")(y)
        return x + y.reshape(b, h, w, c)


class TimeMLP(nn.Module):
    """Sinusoidal embedding of the diffusion step followed by a two-layer MLP."""

    embed_dim: int
    hidden_dim: int
    out_dim: int
    act: str = "swish"

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        act = getattr(nn, self.act)
        h = timestep_embedding(t, self.embed_dim)
        h = act(nn.Dense(self.hidden_dim)(h))
        return nn.Dense(self.out_dim)(h)
