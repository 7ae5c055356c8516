"""Sample from a trained run or a shipped model: python sample.py --workdir runs/<name> | --pretrained NAME [--num 64]."""

from odediff import cli

if __name__ == "__main__":
    cli.sample_entry()
