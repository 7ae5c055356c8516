"""The paper's setting: CelebA 64x64x3; cU-Net nf 16 (RK4 x1) against the DDPM U-Net."""

from odediff.config import default_config


def get_config():
    c = default_config()
    c.data.source = "tfds:celeb_a"
    c.data.image_size = 64
    c.data.channels = 3
    c.data.random_flip = True
    c.model.name = "cunet"
    c.model.cunet.nf = 16
    c.model.cunet.ch_mult = (2, 4, 8, 16)
    c.model.cunet.attn_resolutions = (8,)
    c.model.cunet.time_embed_dim = 64
    c.model.cunet.solver = "rk4"
    c.model.cunet.ode_steps = 1
    c.model.unet.ch = 128
    c.model.unet.ch_mult = (1, 2, 2, 2)
    c.model.unet.num_res_blocks = 2
    c.model.unet.attn_resolutions = (16,)
    c.model.unet.dropout = 0.1
    c.diffusion.beta_schedule = "sigmoid"  # the authors' training defaults
    c.diffusion.prediction = "v"
    c.training.batch_size = 256
    c.training.num_steps = 500_000
    c.training.learning_rate = 2e-4
    c.training.b2 = 0.99
    c.training.ema_decay = 0.9999
    c.training.sample_every = 10_000
    c.training.checkpoint_every = 5000
    c.sampling.sampler = "ddim"
    c.sampling.steps = 256
    return c
