"""The default configuration that every `configs/<name>.py` starts from."""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with defaults; setups override what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"  # digits | tfds:<name> | idx:<dir> | npz:<file> | folder:<dir>
    c.data.image_size = 16
    c.data.channels = 1
    c.data.random_flip = False
    c.data.data_dir = ""  # tfds data_dir; "" means tfds' default
    c.data.holdout_fraction = 0.1  # for sources without a test split

    c.model = ml_collections.ConfigDict()
    c.model.name = "cunet"  # cunet | unet
    # Shared by both denoisers.
    c.model.ch = 16  # cunet: nf (the stem width); unet: base channels
    c.model.ch_mult = (2, 4)  # cunet: ODE block widths in units of nf; unet: level multipliers
    c.model.attn_resolutions = ()
    c.model.time_embed_dim = 64
    # cunet only.
    c.model.norm = "group"  # group | instance
    c.model.num_heads = 4
    c.model.head_dim = 32
    c.model.solver = "euler"  # euler | heun | midpoint | rk4 | tsit5 | dopri5
    c.model.ode_steps = 1  # fixed steps per block; 0 = adaptive (rtol/atol)
    c.model.rtol = 1e-3
    c.model.atol = 1e-3
    c.model.adjoint = "recursive"  # recursive | direct | backsolve (diffeqsolve mode only)
    c.model.ode_mode = "unrolled"  # unrolled | diffeqsolve
    c.model.max_ode_steps = 64
    # unet only.
    c.model.num_res_blocks = 2
    c.model.dropout = 0.0

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_timesteps = 1000
    c.diffusion.beta_schedule = "linear"  # linear | cosine | sigmoid
    c.diffusion.prediction = "eps"  # eps | v | x0

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 64
    c.training.num_steps = 2000
    c.training.optimizer = "adam"  # adam | adamw
    c.training.learning_rate = 2e-4
    c.training.lr_schedule = "constant"  # constant | cosine (after warmup)
    c.training.warmup_steps = 100
    c.training.b1 = 0.9
    c.training.b2 = 0.99
    c.training.weight_decay = 0.0
    c.training.grad_clip = 1.0
    c.training.ema_decay = 0.999
    c.training.log_every = 50
    c.training.sample_every = 1000
    c.training.checkpoint_every = 500
    c.training.keep_checkpoints = 3
    c.training.nonfinite = "stop"  # stop | skip

    c.sampling = ml_collections.ConfigDict()
    c.sampling.sampler = "ddim"  # ancestral | ddim | ode | dpmpp2m
    c.sampling.num_steps = 100
    c.sampling.eta = 0.0
    c.sampling.num_samples = 64
    return c
