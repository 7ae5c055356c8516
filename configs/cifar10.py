"""The DDPM CIFAR-10 setup of Ho et al. 2020 (35.7 M-parameter U-Net)."""

from odediff.config import default_config


def get_config():
    c = default_config()
    c.data.source = "tfds:cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.model.name = "unet"
    c.model.unet.ch = 128
    c.model.unet.ch_mult = (1, 2, 2, 2)
    c.model.unet.num_res_blocks = 2
    c.model.unet.attn_resolutions = (16,)
    c.model.unet.dropout = 0.1
    c.model.cunet.nf = 16
    c.model.cunet.ch_mult = (2, 4, 8, 16)
    c.model.cunet.attn_resolutions = (4,)
    c.model.cunet.solver = "rk4"
    c.diffusion.beta_schedule = "linear"
    c.diffusion.prediction = "eps"
    c.training.batch_size = 128
    c.training.num_steps = 800_000
    c.training.learning_rate = 2e-4
    c.training.warmup_steps = 5000
    c.training.b2 = 0.999
    c.training.ema_decay = 0.9999
    c.training.sample_every = 20_000
    c.training.checkpoint_every = 10_000
    return c
