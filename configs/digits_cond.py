"""The embedded digits, class-conditional with classifier-free guidance: trains on 2 CPU cores in minutes.

python train.py --config configs/digits_cond.py
python sample.py --workdir runs/digits_cond --labels all --num 8 --guidance 2
"""

from pathlib import Path

from odediff.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("digits.py"))
    c.model.num_classes = 10
    c.training.cond_drop_prob = 0.1
    c.sampling.guidance = 2.0
    return c
