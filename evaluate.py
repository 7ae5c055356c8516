"""Sample quality of a trained run against held-out images.

python evaluate.py --workdir runs/<name> [--num 1000 --sampling.sampler=ddim --sampling.steps=100 --batch 250]

Generates --num samples from the run's EMA params, embeds them and the held-out
("test") split in the dataset's feature space (a small classifier trained on the
training split for labelled grey datasets, reported as "FD (classifier features)";
Inception-v3 with --inception_weights for RGB data), prints FD, KID,
precision/recall and class histograms (and for class-conditional runs the share of
samples classified as the class asked for), and writes
<workdir>/eval_<step>_<sampler><steps>[_cfg<w>].json. Sampling options are the run's
own, each replaceable with --sampling.<field>=value as for sample.py.
"""

import sys

from absl import flags

from odediff import cli

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.DEFINE_integer("num", 1000, "Number of samples to generate.")
flags.DEFINE_integer("num_real", None, "Held-out real images to compare with (default: --num, or all there are).")
flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
flags.DEFINE_integer("batch", 250, "Samples generated per compiled call.")
flags.DEFINE_string("cache_dir", None, "Where the feature classifier is cached "
                    "(default ~/.cache/odediff, or <workdir>/../.cache if that is not writable).")
flags.DEFINE_string("inception_weights", None, "Inception-v3 .npz (odediff.features format) for RGB datasets.")
flags.DEFINE_integer("classifier_steps", 1000, "Training steps of the feature classifier (part of its cache key).")
cli.define_sampling_flags("evaluate.py")


def main() -> None:
    from odediff import parallel
    from odediff.evaluation import evaluate_run, format_metrics

    f = flags.FLAGS
    parallel.use_cpu_cores(f.batch)
    result, path = evaluate_run(
        f.workdir, step=f.step, num=f.num, sampling=cli.sampling_overrides(sys.argv), seed=f.seed,
        batch=f.batch, cache_dir=f.cache_dir, inception_weights=f.inception_weights,
        classifier_steps=f.classifier_steps, num_real=f.num_real,
    )
    print(f"{result['model']} step {result['step']}, {result['num_samples']} samples ({result['sampling_used']}; "
          f"{result['nfe']} evaluations, {result['samples_per_second']:.2f} samples/s) "
          f"vs {result['num_real']} held-out images of {result['data_source']}")
    print(format_metrics(result))
    print(f"-> {path}")


if __name__ == "__main__":
    cli.parse_flags("evaluate.py", sys.argv)
    cli.run_main("evaluate.py", main)
