"""Train a diffusion model: python train.py [--config configs/<name>.py] [--workdir runs/<name>]."""

from odediff import cli

if __name__ == "__main__":
    cli.train_entry()
