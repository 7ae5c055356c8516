"""Train a diffusion model: python train.py [--config configs/<name>.py] [--workdir runs/<name>].

Exit codes: 0 done, 1 a non-finite loss stopped training, 2 bad input, 3 the disk filled up while a
checkpoint was saved (the earlier ones are intact). See python train.py --help."""

from odediff import cli

if __name__ == "__main__":
    cli.train_entry()
