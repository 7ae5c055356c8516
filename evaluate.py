"""Sample quality of a trained run against held-out images (FD, KID, precision/recall):
python evaluate.py --workdir runs/<name> [--num 1000 --sampling.sampler=ddim --sampling.steps=100 --batch 250].
See python evaluate.py --help."""

from odediff import cli

if __name__ == "__main__":
    cli.evaluate_entry()
