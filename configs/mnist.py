"""MNIST at 32x32 (zero-padded from 28), from tfds; use --config.data.source=idx:<dir> for IDX files."""

from odediff.config import default_config


def get_config():
    c = default_config()
    c.data.source = "tfds:mnist"
    c.data.image_size = 32
    c.data.channels = 1
    c.model.name = "cunet"
    c.model.cunet.nf = 16
    c.model.cunet.ch_mult = (2, 4, 8)
    c.model.cunet.attn_resolutions = (8,)
    c.model.cunet.solver = "rk4"
    c.model.unet.ch = 64
    c.model.unet.ch_mult = (1, 2, 2)
    c.model.unet.attn_resolutions = (16,)
    c.model.unet.dropout = 0.1
    c.training.batch_size = 128
    c.training.num_steps = 50_000
    c.training.ema_decay = 0.9995
    c.training.sample_every = 5000
    c.training.checkpoint_every = 2500
    return c
