"""odediff: diffusion models with a continuous (neural-ODE) U-Net denoiser, in JAX.

The names below and the submodules (odediff.training, ...) load when first used, so that a
command-line error or --help answers without importing JAX."""

import importlib

_EXPORTS = {
    "default_config": "config",
    "build_denoiser": "models",
    "SAMPLERS": "samplers",
    "ancestral_sample": "samplers",
    "ddim_sample": "samplers",
    "dpmpp2m_sample": "samplers",
    "ode_sample": "samplers",
    "sample": "samplers",
    "Schedule": "schedule",
    "diffusion_loss": "schedule",
    "make_schedule": "schedule",
    "q_sample": "schedule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """A name of __all__ or a submodule, imported on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"odediff.{_EXPORTS[name]}"), name)
    try:
        return importlib.import_module(f"odediff.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"odediff.{name}":
            raise
        raise AttributeError(f"module 'odediff' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
