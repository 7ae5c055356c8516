"""Do the samples look like digits to a classifier that has nothing to do with odediff?

python -m benchmarks.classify_samples [--data DIR] [--image_size 16] [--out JSON] [NPZ ...]

Trains scikit-learn's MLPClassifier (one hidden layer of 256, on pixels) on the MNIST
train split (the same IDX files and split as benchmarks/train_compare.py), reports its
held-out accuracy, then for the held-out images and for each sample file (`images`:
uint8 NHWC; default: every benchmarks/results/mnist_compare/samples_*.npz) the share
it labels with probability >= 0.9, the entropy of those samples' class histogram (bits;
log2(10) = 3.32 when every class is equally common) and the histogram itself.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table, write_json
from odediff import data as data_lib
from odediff.config import default_config
from odediff.evaluation import confidence_stats

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", nargs="*")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--image_size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/mnist_compare/independent_classifier.json")
    a = ap.parse_args()
    files = [Path(p) for p in a.npz] or sorted((REPO / "benchmarks/results/mnist_compare").glob("samples_*.npz"))
    if not files:
        print("classify_samples.py: no sample files given or found", file=sys.stderr)
        sys.exit(2)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # 60 epochs are plenty for this check

    c = default_config().data
    c.source, c.image_size, c.channels = f"idx:{Path(a.data).resolve()}", a.image_size, 1
    train, test = data_lib.load_source(c, "train"), data_lib.load_source(c, "test")
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0
    idx_tr, idx_te = np.arange(len(train)), np.arange(len(test))
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=60, random_state=0)
    clf.fit(flat(train[idx_tr]), train.get_labels(idx_tr))
    accuracy = float(clf.score(flat(test[idx_te]), test.get_labels(idx_te)))
    sets = {"held-out real images": test[idx_te]}
    for f in files:
        images = np.load(f)["images"]
        if images.shape[1:] != (a.image_size, a.image_size, 1) or images.dtype != np.uint8:
            print(
                f"classify_samples.py: {f} holds {images.dtype} {images.shape[1:]}, not uint8 "
                f"({a.image_size}, {a.image_size}, 1): pass --image_size",
                file=sys.stderr,
            )
            sys.exit(2)
        sets[f.stem] = images
    result = {"classifier": "sklearn MLPClassifier(256) on pixels", "test_accuracy": accuracy, "sets": {}}
    rows = []
    for name, images in sets.items():
        s = {"num": int(len(images)), **confidence_stats(clf.predict_proba(flat(images)))}
        result["sets"][name] = s
        rows.append(
            [
                name,
                s["num"],
                f"{s['confident_fraction']:.3f}",
                f"{s['confident_entropy']:.2f}",
                " ".join(f"{v:.2f}" for v in s["confident_histogram"]),
            ]
        )
    print(f"independent classifier: held-out accuracy {accuracy:.4f}")
    print(markdown_table(["images", "n", "p >= 0.9", "entropy (bits)", "class histogram of those"], rows))
    write_json(a.out, result)


if __name__ == "__main__":
    main()
