"""Train a diffusion model: python train.py [--config configs/<name>.py] [--workdir runs/<name>]."""

import sys

from odediff import cli

if __name__ == "__main__":
    cli.define_train_flags()
    cli.parse_flags("train.py", sys.argv)
    cli.run_main("train.py", cli.train_main)
