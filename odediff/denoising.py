"""The paper's noise-robustness experiment: denoising with the reverse chain.

A clean image plus Gaussian noise of std eps is treated as x_t* for the diffusion
step t* whose noise level matches, and the reverse chain is run from there; PSNR/SSIM
of the x0 estimate after every step. `classical_baselines` gives Gaussian-blur and
Wiener-filter numbers for context.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from odediff import metrics
from odediff.samplers import ancestral_step, ddim_step
from odediff.schedule import Schedule, log_sigmas


def matching_step(schedule: Schedule, eps: float) -> int:
    """The step t* whose noise-to-signal ratio sqrt(1 - ab_t) / sqrt(ab_t) is closest
    (in log) to 2 eps: Gaussian noise of std eps on [0, 1] images is std 2 eps in the
    model's [-1, 1] range, and sqrt(ab_t*) (x + 2 eps n) is then distributed as x_t*."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return int(np.argmin(np.abs(np.asarray(log_sigmas(schedule), np.float64) - np.log(2.0 * eps))))


def _make_chain(apply_fn, schedule: Schedule, prediction: str, t_star: int, num_steps: int, sampler: str):
    """jitted (params, x_t*, key) -> x0 estimates after each step, (k, B, H, W, C)."""
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"denoise sampler must be ancestral or ddim, got {sampler!r}")
    ts = jnp.arange(t_star, t_star - num_steps, -1, dtype=jnp.int32)
    step_fn = ancestral_step if sampler == "ancestral" else ddim_step

    @jax.jit
    def chain(params, x, key):
        def step(x, a):
            t, key = a
            return step_fn(apply_fn, params, schedule, x, t, t - 1, key, prediction, clip=True)

        _, x0s = jax.lax.scan(step, x, (ts, jax.random.split(key, num_steps)))
        return jnp.clip(x0s, -1.0, 1.0)

    return chain


def denoise(
    apply_fn,
    params,
    schedule: Schedule,
    prediction: str,
    clean: np.ndarray,
    eps: float,
    num_steps: int,
    key: jax.Array,
    *,
    sampler: str = "ancestral",
    batch: int = 64,
) -> dict:
    """The denoising experiment on uint8 NHWC `clean` images at noise std `eps` ([0, 1] units).

    noisy = clean01 + eps n; x_t* = sqrt(ab_t*) (2 noisy - 1) with t* = matching_step;
    then the reverse chain (ancestral, or DDIM eta 0) runs from t* one step at a time
    for min(num_steps, t* + 1) steps (it ends at t = 0). After each step the x0 estimate
    (clipped, mapped to [0, 1]) is scored against the clean image. Returns the noisy
    input's PSNR/SSIM, the curves (means over images), the values after the last step
    and the best step by mean PSNR (1-based number of steps taken). Noise is not clipped.
    """
    clean = np.asarray(clean)
    if clean.dtype != np.uint8 or clean.ndim != 4:
        raise ValueError(f"clean must be uint8 NHWC, got {clean.dtype} {clean.shape}")
    t_star = matching_step(schedule, eps)
    k = int(min(num_steps, t_star + 1))
    chain = _make_chain(apply_fn, schedule, prediction, t_star, k, sampler)
    sa = float(np.sqrt(np.asarray(schedule.alphas_cumprod)[t_star]))
    clean01 = clean.astype(np.float32) / np.float32(255.0)
    noisy01 = noisy_images(clean, eps, key)
    kchain = jax.random.split(key)[1]
    psnr_curve, ssim_curve = np.zeros(k), np.zeros(k)
    final_psnr, final_ssim = [], []
    seconds = 0.0
    batch = min(batch, len(clean))
    x_all = np.float32(sa) * (np.float32(2.0) * noisy01 - np.float32(1.0))
    compiled = chain.lower(params, jnp.asarray(x_all[:batch]), kchain).compile()
    for i, s in enumerate(range(0, len(clean), batch)):
        x = x_all[s : s + batch]
        b = len(x)
        if b < batch:  # pad to the compiled batch size
            x = np.concatenate([x, np.zeros((batch - b,) + x.shape[1:], x.dtype)])
        t0 = time.perf_counter()
        x0s = np.asarray(jax.block_until_ready(compiled(params, jnp.asarray(x), jax.random.fold_in(kchain, i))))[:, :b]
        seconds += time.perf_counter() - t0
        est = (x0s + np.float32(1.0)) * np.float32(0.5)  # (k, b, H, W, C) in [0, 1]
        ref = np.broadcast_to(clean01[s : s + batch], est.shape)
        p, q = metrics.psnr(est, ref), metrics.ssim(est, ref)  # (k, b)
        psnr_curve += p.sum(axis=1)
        ssim_curve += q.sum(axis=1)
        final_psnr.append(p[-1])
        final_ssim.append(q[-1])
    n = len(clean)
    psnr_curve, ssim_curve = psnr_curve / n, ssim_curve / n
    best = int(np.argmax(psnr_curve))
    return {
        "eps": float(eps),
        "t_star": t_star,
        "sigma_t_star": float(np.sqrt(1.0 - sa**2) / sa),
        "steps": k,
        "sampler": sampler,
        "num_images": n,
        "noisy_psnr": float(np.mean(metrics.psnr(noisy01, clean01))),
        "noisy_ssim": float(np.mean(metrics.ssim(np.clip(noisy01, 0.0, 1.0), clean01))),
        "psnr": float(psnr_curve[-1]),
        "ssim": float(ssim_curve[-1]),
        "psnr_std": float(np.std(np.concatenate(final_psnr))),
        "ssim_std": float(np.std(np.concatenate(final_ssim))),
        "best_psnr": float(psnr_curve[best]),
        "best_step": best + 1,
        "ssim_at_best": float(ssim_curve[best]),
        "best_ssim": float(ssim_curve.max()),
        "psnr_curve": [float(v) for v in psnr_curve],
        "ssim_curve": [float(v) for v in ssim_curve],
        "seconds": seconds,  # chain time, compilation excluded
    }


def noisy_images(clean: np.ndarray, eps: float, key: jax.Array) -> np.ndarray:
    """clean / 255 + eps n, n ~ N(0, I) from `key`: the noisy images `denoise` takes (and
    the baselines, with the same key)."""
    knoise, _ = jax.random.split(key)
    noise = np.asarray(jax.random.normal(knoise, clean.shape, jnp.float32))
    return clean.astype(np.float32) / np.float32(255.0) + np.float32(eps) * noise


def classical_baselines(clean: np.ndarray, eps: float, key: jax.Array) -> dict:
    """Gaussian blur and Wiener filter (scipy), each with the parameter giving the best
    mean PSNR on these very images (an oracle choice: an upper bound for the filter),
    on the same noisy images as `denoise` with the same key."""
    from scipy import ndimage, signal

    clean01 = clean.astype(np.float64) / 255.0
    noisy = noisy_images(clean, eps, key).astype(np.float64)
    out = {}

    def score(filtered):
        filtered = np.clip(filtered, 0.0, 1.0)
        return float(np.mean(metrics.psnr(filtered, clean01))), float(np.mean(metrics.ssim(filtered, clean01)))

    best = None
    for sigma in (0.3, 0.5, 0.7, 0.9, 1.1, 1.4, 1.8, 2.2):
        f = ndimage.gaussian_filter(noisy, sigma=(0, sigma, sigma, 0))
        p, q = score(f)
        if best is None or p > best[0]:
            best = (p, q, sigma)
    out["gaussian_blur"] = {"psnr": best[0], "ssim": best[1], "param": f"sigma={best[2]}"}
    best = None
    for size in (3, 5, 7):
        f = np.stack(
            [
                np.stack([signal.wiener(img[..., c], size, noise=eps**2) for c in range(img.shape[-1])], axis=-1)
                for img in noisy
            ]
        )
        p, q = score(f)
        if best is None or p > best[0]:
            best = (p, q, size)
    out["wiener"] = {"psnr": best[0], "ssim": best[1], "param": f"window={best[2]}, noise var=eps^2"}
    return out
