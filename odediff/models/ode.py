"""The ODE block of the continuous U-Net: a vector field solved with diffrax."""

import dataclasses
from collections.abc import Callable

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from odediff.models.layers import Conv, make_norm, softplus

_RK4_TABLEAU = diffrax.ButcherTableau(
    c=np.array([0.5, 0.5, 1.0]),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
)


class RK4(diffrax.AbstractERK):
    """Classic fourth-order Runge-Kutta (4 evaluations per step), absent from diffrax."""

    tableau = _RK4_TABLEAU
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "rk4": RK4,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
}
ADAPTIVE = ("heun", "tsit5", "dopri5")
ADJOINTS = {
    "recursive": diffrax.RecursiveCheckpointAdjoint,
    "direct": diffrax.DirectAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
}
MODES = ("unrolled", "diffeqsolve")


@dataclasses.dataclass(frozen=True)
class ODESettings:
    """How an ODE block is solved: `solver` in `steps` fixed steps (0: adaptive, with
    rtol/atol, diffeqsolve mode only), in `mode` "unrolled" (the steps traced to
    straight-line code) or "diffeqsolve" (diffrax's loop, with `adjoint` and at most
    `max_steps` steps); `remat` recomputes the solve's activations in the backward
    pass instead of storing them. Frozen and hashable: a Flax module attribute."""

    solver: str = "rk4"
    steps: int = 1
    mode: str = "unrolled"
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: str = "recursive"
    max_steps: int = 64
    remat: bool = False

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown ODE solver {self.solver!r}: use one of {sorted(SOLVERS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown ODE mode {self.mode!r}: use one of {MODES}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"unknown ODE adjoint {self.adjoint!r}: use one of {sorted(ADJOINTS)}")
        if self.steps < 0:
            raise ValueError(f"ode_steps must be >= 0 (0 = adaptive), got {self.steps}")
        if self.steps == 0 and (self.mode != "diffeqsolve" or self.solver not in ADAPTIVE):
            raise ValueError(
                f"adaptive solves (ode_steps=0) need ode_mode='diffeqsolve' and a solver with an "
                f"error estimate {ADAPTIVE}; got mode {self.mode!r}, solver {self.solver!r}"
            )

    def replace(self, **changes) -> "ODESettings":
        """A copy with `changes`, checked like any other."""
        return dataclasses.replace(self, **changes)


def solve(
    field: Callable[[jax.Array, object], jax.Array],
    y0: jax.Array,
    args: object,
    settings: ODESettings = ODESettings(),
) -> jax.Array:
    """Integrates dy/ds = field(y, args) over s in [0, 1] as `settings` say; returns y(1).

    "unrolled" traces the steps to straight-line code (Runge-Kutta stages from the
    diffrax solver's tableau; Euler written out): on XLA:CPU its gradient is many
    times faster than the same steps inside diffeqsolve's while loop. "diffeqsolve"
    uses diffrax's loop and adjoints.
    """
    num_steps = settings.steps
    term = diffrax.ODETerm(lambda s, y, a: field(y, a))
    impl = SOLVERS[settings.solver]()
    if settings.mode == "unrolled":
        if isinstance(impl, diffrax.AbstractERK):
            return _unrolled_erk(impl.tableau, field, y0, args, num_steps)
        y = y0  # Euler, the one solver without a tableau; Python-float steps keep y's dtype
        for _ in range(num_steps):
            y = y + (1.0 / num_steps) * field(y, args)
        return y
    if num_steps == 0:
        controller, dt0 = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol), None
    else:
        controller, dt0 = diffrax.ConstantStepSize(), 1.0 / num_steps
    sol = diffrax.diffeqsolve(
        term,
        impl,
        0.0,
        1.0,
        dt0,
        y0,
        args,
        stepsize_controller=controller,
        adjoint=ADJOINTS[settings.adjoint](),
        max_steps=max(settings.max_steps, num_steps),
        saveat=diffrax.SaveAt(t1=True),
        throw=False,
    )
    # Under sharding diffrax cannot raise; a failed solve is surfaced as NaN instead.
    ok = sol.result == diffrax.RESULTS.successful
    return jnp.where(ok, sol.ys[-1], jnp.nan)


def _unrolled_erk(tableau: diffrax.ButcherTableau, field, y0, args, num_steps: int):
    """Fixed steps of an explicit Runge-Kutta method, its stages written out from the
    diffrax solver's own Butcher tableau. diffrax's `step` runs the stages in a while
    loop, whose gradient on XLA:CPU is ~20x slower than straight-line code."""
    h = 1.0 / num_steps
    y, k_first = y0, None
    for _ in range(num_steps):
        ks = [field(y, args) if k_first is None else k_first]
        for row in tableau.a_lower:
            ks.append(field(y + h * sum(float(a) * k for a, k in zip(row, ks) if a != 0), args))
        y = y + h * sum(float(b) * k for b, k in zip(tableau.b_sol, ks) if b != 0)
        # First-same-as-last: the last stage was evaluated at the new y.
        k_first = ks[-1] if tableau.fsal else None
    return y


FIELDS = ("residual", "release")


class VectorField(nn.Module):
    """The field of one ODE block, FiLM-conditioned on the diffusion step (`scale`,
    `shift`: (B, channels), applied after the second norm).

    "release" (the authors' code): norm -> 3x3 conv -> act -> norm -> FiLM -> 3x3 conv
    -> act, + y. Its + y and final softplus (>= 0) make every block grow its state
    about e-fold; activations and gradients blow up with depth.
    "residual" (default): norm -> 3x3 conv -> act -> norm -> FiLM -> act -> 3x3 conv,
    the last conv zero-initialised: the release's layers with the last activation
    moved before the last conv and no + y, so each block starts as the identity and
    y(1) = y + integral of the field. Same parameters. (The pre-activation order,
    norm -> act -> conv first, trains alike but ran 1.3-1.5x slower on XLA:CPU.)
    """

    channels: int
    norm: str = "group"
    kind: str = "residual"

    @nn.compact
    def __call__(self, y: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
        if self.kind not in FIELDS:
            raise ValueError(f"unknown ODE field {self.kind!r}: use one of {FIELDS}")
        h = softplus(Conv(self.channels, (3, 3))(make_norm(self.norm, self.channels)(y)))
        h = make_norm(self.norm, self.channels)(h, scale, shift)
        if self.kind == "release":
            return softplus(Conv(self.channels, (3, 3))(h)) + y
        return Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(softplus(h))


class ODEBlock(nn.Module):
    """One continuous block: y(1) of the vector field, conditioned on the diffusion step.

    The field stays unbound: its params are created here and passed to the solve
    through `args`, because a bound Flax module cannot be called inside diffrax's
    traced loop.
    """

    channels: int
    norm: str = "group"
    field: str = "residual"
    ode: ODESettings = ODESettings()

    @nn.compact
    def __call__(self, y: jax.Array, temb: jax.Array) -> jax.Array:
        film = nn.Dense(2 * self.channels, name="time_proj")(temb)
        scale, shift = jnp.split(film, 2, axis=-1)
        field = VectorField(self.channels, self.norm, self.field)
        f32 = lambda *a: [v.astype(jnp.float32) for v in a]  # noqa: E731  (params start float32)
        params = self.param("field", lambda k: field.init(k, *f32(y, scale, shift))["params"])

        def f(state, args):
            p, sc, sh = args
            return field.apply({"params": p}, state, sc, sh)

        def integrate(y, args):
            return solve(f, y, args, self.ode)

        return (jax.checkpoint(integrate) if self.ode.remat else integrate)(y, (params, scale, shift))
