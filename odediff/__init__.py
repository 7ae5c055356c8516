"""odediff: diffusion models with a continuous (neural-ODE) U-Net denoiser, in JAX."""

from odediff.config import default_config
from odediff.models import build_denoiser
from odediff.samplers import SAMPLERS, ancestral_sample, ddim_sample, dpmpp2m_sample, ode_sample, sample
from odediff.schedule import Schedule, diffusion_loss, make_schedule, q_sample

__all__ = [
    "SAMPLERS",
    "Schedule",
    "ancestral_sample",
    "build_denoiser",
    "ddim_sample",
    "default_config",
    "diffusion_loss",
    "dpmpp2m_sample",
    "make_schedule",
    "ode_sample",
    "q_sample",
    "sample",
]
