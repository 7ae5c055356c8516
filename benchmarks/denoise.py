"""The paper's noise-robustness experiment: denoise held-out images with each trained denoiser.

python -m benchmarks.denoise --workdirs runs/mnist_cunet runs/mnist_unet \
    [--eps 0.05,0.1,0.15,0.2,0.3 --num 256 --k 100 --sampler ancestral --out benchmarks/results/denoise.json]

Clean held-out ("test" split) images get Gaussian noise of std eps (on [0, 1]); the
noisy image, scaled by sqrt(alpha_bar_t*), is taken as x_t* for the step t* whose
noise level matches (sqrt(1 - ab)/sqrt(ab) = 2 eps in the model's [-1, 1] range), and
the reverse chain runs from t* one step at a time for up to k steps (it stops at t = 0).
Reported: PSNR/SSIM of the x0 estimate after the last step and the best mean PSNR over
the chain (with its step). The same noisy images go to both denoisers and to the
classical baselines (Gaussian blur and Wiener filter, each with the parameter that is
best on these very images: an oracle-tuned upper bound for those filters).
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import machine, markdown_table, write_json
from odediff import data as data_lib
from odediff.denoising import classical_baselines, denoise
from odediff.generation import restore_run
from odediff.models import build_denoiser
from odediff.schedule import make_schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdirs", nargs="+", required=True, help="trained runs, any denoisers, all on the same data")
    ap.add_argument("--eps", default="0.05,0.1,0.15,0.2,0.3")
    ap.add_argument("--num", type=int, default=256, help="held-out images")
    ap.add_argument("--k", type=int, default=100, help="reverse-chain steps (at most t* + 1 are taken)")
    ap.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/denoise.json")
    a = ap.parse_args()
    if len({Path(wd).name for wd in a.workdirs}) < len(a.workdirs):
        ap.error("the runs' directories need distinct names (they label the table's rows)")
    eps_list = [float(e) for e in a.eps.split(",")]

    models, data_config = {}, None
    for wd in a.workdirs:
        try:
            config, params, step = restore_run(wd)
        except Exception as e:  # noqa: BLE001
            sys.exit(f"denoise.py: error: {wd}: {e}")
        name = Path(wd).name
        if data_config is None:
            data_config = config.data
        elif (config.data.source, config.data.image_size, config.data.channels) != (
            data_config.source,
            data_config.image_size,
            data_config.channels,
        ):
            sys.exit(f"denoise.py: error: {wd} was trained on other data than {a.workdirs[0]}")
        model = build_denoiser(config.model)
        schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
        apply = (lambda m: lambda p, x, t: m.apply({"params": p}, x, t))(model)
        models[name] = (config, apply, params, step, schedule, wd)

    test = data_lib.load_source(data_config, "test")
    n = min(a.num, len(test))
    idx = np.sort(np.random.default_rng(a.seed).choice(len(test), n, replace=False))
    clean = test[idx]

    rows, records = [], []
    for eps in eps_list:
        key = jax.random.fold_in(jax.random.key(a.seed), int(round(eps * 1e4)))
        base = classical_baselines(clean, eps, key)
        noisy_row = None
        for name, (config, apply, params, step, schedule, wd) in models.items():
            r = denoise(
                apply,
                params,
                schedule,
                config.diffusion.prediction,
                clean,
                eps,
                a.k,
                key,
                sampler=a.sampler,
                batch=a.batch,
            )
            r.update(model=name, workdir=str(wd), checkpoint_step=step)
            records.append(r)
            noisy_row = [eps, "noisy input", "", f"{r['noisy_psnr']:.2f}", f"{r['noisy_ssim']:.3f}", "", ""]
            rows.append(
                [
                    eps,
                    name,
                    f"t*={r['t_star']}, {r['steps']} steps",
                    f"{r['psnr']:.2f}",
                    f"{r['ssim']:.3f}",
                    f"{r['best_psnr']:.2f} @ {r['best_step']}",
                    f"{r['seconds']:.1f}",
                ]
            )
        rows.append(noisy_row)
        for bname, b in base.items():
            rows.append([eps, bname, b["param"], f"{b['psnr']:.2f}", f"{b['ssim']:.3f}", "", ""])
            records.append({"eps": eps, "model": bname, **b})
    print(
        f"Denoising {n} held-out images of {data_config.source} ({a.sampler} chain from t*, up to {a.k} steps) "
        f"on {machine()}"
    )
    print(
        markdown_table(
            ["eps", "denoiser", "setting", "PSNR (after k)", "SSIM (after k)", "best PSNR @ step", "chain s"], rows
        )
    )
    write_json(
        a.out,
        {"num_images": n, "k": a.k, "sampler": a.sampler, "data_source": str(data_config.source), "results": records},
    )
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
