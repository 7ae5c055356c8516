"""Checks odediff's Inception-v3 against pytorch-fid's FID Inception: writes the test fixture.

python -m benchmarks.inception_fixture [--out tests/fixtures/inception_pytorch_fid.npz]

Needs torch, torchvision and pytorch-fid (this script only; odediff and its tests do
not). Builds pytorch-fid's `InceptionV3` (pool3, FID blocks, bilinear resize to 299,
inputs in [0, 1]) with seeded random weights in place of the published file
(`seeded_state_dict`: He-scaled convolutions, batch-norm statistics near identity),
runs it on a few fixed images and stores the images, the 2048-d features and the
weights' shapes. tests/test_features.py rebuilds the same weights without torch,
converts them with `odediff.inception.convert_torch_state_dict` and compares.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np

SEED = 0


def seeded_state_dict(shapes: dict[str, list[int]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Random Inception weights in torch's layout, the same for the same shapes and seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith("num_batches_tracked"):
            out[name] = np.zeros(shape, np.int64)
            continue
        if name.endswith("conv.weight"):
            v = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif name.endswith(("bn.weight", "bn.running_var")):
            v = rng.uniform(0.8, 1.2, shape)
        else:  # bn.bias, bn.running_mean, fc
            v = rng.normal(0.0, 0.1, shape)
        out[name] = v.astype(np.float32)
    return out


def fixed_images(seed: int = 1) -> np.ndarray:
    """Four uint8 32x32 RGB images, two blocky and two noise; both networks resize them to 299."""
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (2, 8, 8, 3)), np.ones((1, 4, 4, 1)))  # blocky: large-scale structure
    noise = rng.integers(0, 256, (2, 32, 32, 3))
    return np.concatenate([smooth, noise]).astype(np.uint8)


def main() -> None:
    import torch
    import torchvision
    from pytorch_fid import inception as fid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/inception_pytorch_fid.npz")
    a = ap.parse_args()

    # pytorch-fid's blocks hold the same parameters as torchvision's: take the shapes there
    base = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    shapes = {k: list(v.shape) for k, v in base.state_dict().items()}
    weights = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes).items()}
    fid.load_state_dict_from_url = lambda *args, **kwargs: weights  # instead of downloading the published file
    net = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    images = fixed_images()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        features = net(x)[0].squeeze(-1).squeeze(-1).numpy()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=images,
        features=features.astype(np.float32),
        shapes=json.dumps(shapes),
        versions=json.dumps(
            {
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "pytorch_fid": getattr(fid, "__version__", "") or _version("pytorch-fid"),
            }
        ),
    )
    print(f"{len(images)} images -> features {features.shape}, |f| mean {np.abs(features).mean():.4f} -> {out}")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
