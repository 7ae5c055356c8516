"""Sample from a trained run: python sample.py --workdir runs/<name> [--num 64 --sampler ddim --steps 100]."""

import sys

from odediff import cli

if __name__ == "__main__":
    cli.define_sample_flags()
    cli.parse_flags("sample.py", sys.argv)
    cli.run_main("sample.py", cli.sample_main)
