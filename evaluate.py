"""Sample quality of a trained run against held-out images.

python evaluate.py --workdir runs/<name> [--num 1000 --sampler ddim --steps 100 --batch 250]

Generates --num samples from the run's EMA params, embeds them and the held-out
("test") split in the dataset's feature space (a small classifier trained on the
training split for labelled grey datasets, reported as "FD (classifier features)";
Inception-v3 with --inception_weights for RGB data), prints FD, KID,
precision/recall and class histograms, and writes
<workdir>/eval_<step>_<sampler><steps>.json.
"""

import sys

from absl import flags

from odediff import cli

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.DEFINE_integer("num", 1000, "Number of samples to generate.")
flags.DEFINE_integer("num_real", None, "Held-out real images to compare with (default: --num, or all there are).")
flags.DEFINE_string("sampler", None, "ancestral | ddim | ode | dpmpp2m (default: the run's config).")
flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's config); 0 with --sampler ode is adaptive.")
flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
flags.DEFINE_integer("batch", 250, "Samples generated per compiled call.")
flags.DEFINE_string("cache_dir", None, "Where the feature classifier is cached "
                    "(default ~/.cache/odediff, or <workdir>/../.cache if that is not writable).")
flags.DEFINE_string("inception_weights", None, "Inception-v3 .npz (odediff.features format) for RGB datasets.")
flags.DEFINE_integer("classifier_steps", 1000, "Training steps of the feature classifier (part of its cache key).")


def main() -> None:
    from odediff import parallel
    from odediff.evaluation import evaluate_run, format_metrics

    f = flags.FLAGS
    parallel.use_cpu_cores(f.batch)
    result, path = evaluate_run(
        f.workdir, step=f.step, num=f.num, sampler=f.sampler, num_steps=f.steps, seed=f.seed,
        batch=f.batch, cache_dir=f.cache_dir, inception_weights=f.inception_weights,
        classifier_steps=f.classifier_steps, num_real=f.num_real,
    )
    print(f"{result['model']} step {result['step']}, {result['num_samples']} samples ({result['sampler']} "
          f"{result['steps']} steps, {result['nfe']} evaluations, {result['samples_per_second']:.2f} samples/s) "
          f"vs {result['num_real']} held-out images of {result['data_source']}")
    print(format_metrics(result))
    print(f"-> {path}")


if __name__ == "__main__":
    cli.parse_flags("evaluate.py", sys.argv)
    cli.run_main("evaluate.py", main)
