"""Layers shared by both denoisers: convolution, time embedding, norms, attention."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NORMS = ("group", "instance")


@jax.custom_vjp
def softplus(x: jax.Array) -> jax.Array:
    """log(1 + e^x), to float32 rounding, about 2x faster than `jax.nn.softplus` on XLA:CPU.

    max(x, 0) + log1p(u) with u = e^-|x| in (0, 1], and log1p(u) = 2 atanh(s) with
    s = u / (2 + u) <= 1/3, summed to s^13 (truncation < 1e-8): one exp and one
    division instead of XLA's slower log. The derivative is the exact sigmoid, computed
    from x in the backward pass (so reverse mode only): a saved derivative, or an e^-|x|
    shared with the forward, made the forward write a second array in a second kernel.
    """
    u = jnp.exp(-jnp.abs(x))
    # Times a reciprocal, not a division: XLA fuses no expensive op (a divide) into a
    # consumer that reads it twice (s * s), and left the series a second kernel.
    s = u * (1.0 / (2.0 + u))
    s2 = s * s
    series = jnp.full_like(s, 1 / 13)
    for k in (11, 9, 7, 5, 3, 1):
        series = series * s2 + 1 / k
    return jnp.maximum(x, 0.0) + 2.0 * s * series


def _softplus_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return softplus(x), x


def _softplus_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * jax.nn.sigmoid(x),)


softplus.defvjp(_softplus_fwd, _softplus_bwd)


ACTIVATIONS = {"swish": nn.swish, "softplus": softplus}

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kwargs
) -> jax.Array:
    """`lax.conv_general_dilated`, computed as one matrix product of the kernel's shifted views
    where the image is smaller than the kernel (a 3x3 convolution at 2x2 pixels): XLA:CPU
    rewrites such a convolution (image and kernel swapped) into a form that its fast
    convolution kernels do not take (docs/results.md, "Where the time goes, op by op")."""
    dn, groups = kwargs.get("dimension_numbers"), kwargs.get("feature_group_count", 1)
    size, window = lhs.shape[1:-1], rhs.shape[:-2]
    plain = (
        lhs.ndim != 4
        or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
        != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        or groups != 1
        or any(v != 1 for v in (*window_strides, *(lhs_dilation or ()), *(rhs_dilation or ())))
        or all(s >= k for s, k in zip(size, window))
    )
    pads = lax.padtype_to_pads(size, window, window_strides, padding) if isinstance(padding, str) else padding
    if plain or any(p < 0 for pair in pads for p in pair):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs)
    x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    (kh, kw), (oh, ow) = window, (x.shape[1] - window[0] + 1, x.shape[2] - window[1] + 1)
    views = jnp.concatenate([x[:, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=-1)
    return lax.dot_general(
        views, rhs.reshape(-1, rhs.shape[-1]), (((3,), (0,)), ((), ())), precision=kwargs.get("precision")
    )


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""`nn.Conv` (same parameters) with `conv_general_dilated` above."""


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """The sinusoidal embedding of Ho et al. (as in the DDPM release), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def default_num_groups(channels: int) -> int:
    """Largest divisor of `channels` not above min(32, channels // 4): 8 groups at 32 channels,
    32 from 128. At least 4 channels a group: a group of one channel normalises away a bias added
    per channel, such as a residual block's timestep embedding."""
    limit = max(1, min(32, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


class GroupNorm(nn.Module):
    """Group normalisation over NHWC, numerically as `flax.linen.GroupNorm`, with an
    optional FiLM (`film_scale`, `film_shift`: (B, C)) applied after it.

    Statistics are reduced per channel first and then pooled per group, which on
    XLA:CPU runs ~7x faster than flax's single reduction over (H, W, channels of a
    group). Normalisation, affine and FiLM fold into one per-(image, channel) map
    x * a + b over (B, C) coefficients.
    """

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(
        self, x: jax.Array, film_scale: jax.Array | None = None, film_shift: jax.Array | None = None
    ) -> jax.Array:
        b, c = x.shape[0], x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"{c} channels do not split into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        x32 = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - 1))
        size, pixels = c // self.num_groups, math.prod(x.shape[1:-1])
        if size == 1:
            mean, mean_sq = jnp.mean(x32, axes), jnp.mean(jnp.square(x32), axes)
        else:
            # Per-channel sums averaged per group and expanded back to channels by a matmul with
            # a block-averaging matrix, each sum with its own matmul: XLA:CPU fuses a reduction
            # and the dot after it into one kernel, while stacking the moments into one
            # reduction wrote [x, x^2] out first. Not jnp.repeat: XLA:CPU fused a repeat into the
            # elementwise pass below and recomputed it per pixel in unvectorised index arithmetic
            # (3-4x slower); a dot is never fused into its consumer. Float32-accurate only at
            # "highest" precision (GPUs default to TF32, TPUs to bf16 passes). Never concatenate
            # the moments along the batch: under data parallelism that put all-to-alls in the
            # backward pass (slow, and able to deadlock XLA:CPU's collectives).
            block = jnp.repeat(jnp.eye(self.num_groups, dtype=jnp.float32), size, axis=0)
            pool = jnp.repeat(block, size, axis=1) / (size * pixels)
            mean, mean_sq = (
                jnp.dot(jnp.sum(v, axes), pool, precision=jax.lax.Precision.HIGHEST) for v in (x32, jnp.square(x32))
            )
        inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
        f32 = lambda v: v.astype(jnp.float32)  # noqa: E731  (params and FiLM may be bfloat16)
        a = inv * f32(scale)[None, :]
        shift = f32(bias)[None, :] - mean * a
        if film_scale is not None:
            a, shift = a * (1.0 + f32(film_scale)), shift * (1.0 + f32(film_scale))
        if film_shift is not None:
            shift = shift + f32(film_shift)
        bcast = (b,) + (1,) * (x.ndim - 2) + (c,)
        return (x32 * a.reshape(bcast) + shift.reshape(bcast)).astype(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Group norm (the paper's figure) or instance norm (the authors' release)."""
    if kind == "group":
        return GroupNorm(num_groups=default_num_groups(channels))
    if kind == "instance":
        return GroupNorm(num_groups=channels)
    raise ValueError(f"unknown norm {kind!r}: use one of {NORMS}")


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels with a residual; `norm` is "rms" or "group" (with
    `num_groups` groups)."""

    num_heads: int
    head_dim: int
    norm: str = "rms"
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = nn.RMSNorm()(x) if self.norm == "rms" else GroupNorm(num_groups=self.num_groups)(x)
        y = y.reshape(b, h * w, c)
        q, k, v = (nn.DenseGeneral((self.num_heads, self.head_dim), name=n)(y) for n in ("q", "k", "v"))
        y = nn.dot_product_attention(q, k, v)
        y = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, name="out")(y)
        return x + y.reshape(b, h, w, c)


class LabelEmbed(nn.Module):
    """A learned vector per class and one for the null class (index num_classes), which
    also stands in for missing labels: the condition of classifier-free guidance."""

    num_classes: int
    dim: int

    @nn.compact
    def __call__(self, labels: jax.Array | None, batch: int) -> jax.Array:
        if labels is None:
            labels = jnp.full((batch,), self.num_classes, jnp.int32)
        return nn.Embed(self.num_classes + 1, self.dim, embedding_init=nn.initializers.normal(0.02))(labels)


class TimeMLP(nn.Module):
    """Sinusoidal embedding of the diffusion step followed by a two-layer MLP."""

    embed_dim: int
    hidden_dim: int
    out_dim: int
    act: str = "swish"
    dtype: jnp.dtype = jnp.float32  # of the embedding fed to the MLP: the params' dtype

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.act]
        h = timestep_embedding(t, self.embed_dim).astype(self.dtype)
        h = act(nn.Dense(self.hidden_dim)(h))
        return nn.Dense(self.out_dim)(h)
