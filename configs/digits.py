"""The embedded default: scikit-learn's 8x8 digits at 16x16, trains on 2 CPU cores in minutes."""

from odediff.config import default_config


def get_config():
    c = default_config()
    c.data.source = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.model.name = "cunet"
    c.model.cunet.nf = 16
    c.model.cunet.ch_mult = (2, 4)
    c.model.cunet.solver = "euler"
    c.model.cunet.ode_steps = 1
    c.model.unet.ch = 32
    c.model.unet.ch_mult = (1, 2, 2)
    c.training.batch_size = 64
    c.training.num_steps = 3000
    c.training.learning_rate = 1e-3
    c.training.warmup_steps = 100
    c.training.ema_decay = 0.995
    c.training.sample_every = 1000
    c.training.checkpoint_every = 500
    c.sampling.steps = 100
    return c
