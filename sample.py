"""Sample from a trained run: python sample.py --workdir runs/<name> [--num 64 --sampler ddim --steps 100]."""

from odediff import cli

if __name__ == "__main__":
    cli.sample_entry()
