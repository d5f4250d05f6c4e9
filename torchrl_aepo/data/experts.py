"""Scripted expert controllers for the locally built datasets.

Both experts are plain numpy callables ``obs [..., obs_dim] -> action [..., act_dim]``
(float32), so they can drive a single gymnasium env or a vector env.

* :class:`PendulumSwingUpExpert` (``Pendulum-v1``): energy-pumping swing-up, PD balance near
  the top. Average return about -140 over random starts (a uniform random policy: about -1230).
* :class:`DoublePendulumLQRExpert` (``InvertedDoublePendulum-v5``): discrete-time LQR on a
  finite-difference linearisation of the MuJoCo model around the upright equilibrium. It
  balances every episode for the full 1000 steps (return about 9360; random: about 50).

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("Pendulum-v1")
    >>> expert = PendulumSwingUpExpert()
    >>> obs, _ = env.reset(seed=0)
    >>> expert(obs).shape
    (1,)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DoublePendulumLQRExpert", "PendulumSwingUpExpert"]


class PendulumSwingUpExpert:
    """Swing-up and balance controller for gymnasium ``Pendulum-v1``.

    Pendulum-v1 integrates ``th'' = 3 g / (2 l) sin(th) + 3 / (m l^2) u`` with ``g=10, m=l=1``
    (``th = 0`` is upright), so ``E = th'^2 / 2 + 15 cos(th)`` is conserved without torque and
    ``dE/dt = 3 u th'``. Far from the top the controller pumps energy towards the upright value
    ``E* = 15`` with ``u = k_energy (E* - E) th'``; once ``cos(th) > cos_switch`` it balances with
    ``u = -(kp th + kd th')``. Torques are clipped to ``[-max_torque, max_torque]``.

    Args:
        k_energy: energy-pumping gain.
        kp: proportional gain of the balance controller.
        kd: derivative gain of the balance controller.
        cos_switch: switch to the balance controller when ``cos(th)`` exceeds this.
        max_torque: torque limit of the env.

    Example:
        >>> import numpy as np
        >>> PendulumSwingUpExpert()(np.array([-1.0, 0.0, 0.0]))  # hanging at rest: kick
        array([2.], dtype=float32)
    """

    def __init__(
        self,
        k_energy: float = 0.6,
        kp: float = 10.0,
        kd: float = 2.0,
        cos_switch: float = 0.85,
        max_torque: float = 2.0,
    ) -> None:
        self.k_energy = k_energy
        self.kp = kp
        self.kd = kd
        self.cos_switch = cos_switch
        self.max_torque = max_torque

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Torque ``[..., 1]`` for observations ``[..., 3] = (cos th, sin th, th')``."""
        return _per_row(self._torque, obs, 3)

    def _torque(self, cos: float, sin: float, vel: float) -> float:
        if cos > self.cos_switch:
            torque = -(self.kp * math.atan2(sin, cos) + self.kd * vel)
        elif abs(vel) < 1e-3:  # at rest at the bottom th' = 0 gives no pumping torque: kick
            torque = self.max_torque
        else:
            torque = self.k_energy * (15.0 - (0.5 * vel * vel + 15.0 * cos)) * vel
        return min(self.max_torque, max(-self.max_torque, torque))


class DoublePendulumLQRExpert:
    """LQR balance controller for gymnasium ``InvertedDoublePendulum-v5``.

    The state ``s = (x, th1, th2, x', th1', th2')`` is read from the observation
    ``(x, sin th1, sin th2, cos th1, cos th2, x', th1', th2', constraint force)``. The gain ``K``
    solves the discrete algebraic Riccati equation for ``s_{k+1} = A s_k + B u_k``, where
    ``A, B`` are central finite differences of one env step (``frame_skip`` MuJoCo steps of the
    env's own model) around the upright equilibrium, with costs ``Q = diag(q_diag)``, ``R = r``.
    The action is ``clip(-K s, -1, 1)``.

    Args:
        env: a ``InvertedDoublePendulum-v5`` env (only its MuJoCo model and ``frame_skip`` are
            read; its state is not touched). ``None`` makes one.
        q_diag: state cost weights for ``(x, th1, th2, x', th1', th2')``.
        r: control cost weight.

    Example:
        >>> expert = DoublePendulumLQRExpert()
        >>> expert.gain.shape
        (1, 6)
    """

    def __init__(
        self,
        env=None,
        q_diag: tuple[float, ...] = (1.0, 50.0, 50.0, 0.1, 1.0, 1.0),
        r: float = 1.0,
    ) -> None:
        import gymnasium as gym
        import mujoco

        own_env = env is None
        if own_env:
            env = gym.make("InvertedDoublePendulum-v5")
        model, frame_skip = env.unwrapped.model, env.unwrapped.frame_skip
        if own_env:
            env.close()
        data = mujoco.MjData(model)
        nq, nv = model.nq, model.nv

        def step(state: np.ndarray, ctrl: float) -> np.ndarray:
            mujoco.mj_resetData(model, data)
            data.qpos[:], data.qvel[:], data.ctrl[:] = state[:nq], state[nq:], ctrl
            for _ in range(frame_skip):
                mujoco.mj_step(model, data)
            return np.concatenate([data.qpos, data.qvel])

        eps, dim = 1e-5, nq + nv
        basis = np.eye(dim) * eps
        a = np.stack([(step(e, 0.0) - step(-e, 0.0)) / (2 * eps) for e in basis], axis=1)
        b = ((step(np.zeros(dim), eps) - step(np.zeros(dim), -eps)) / (2 * eps))[:, None]
        self.gain = _dlqr(a, b, np.diag(q_diag), np.array([[r]]))
        self._gain_row = self.gain[0].tolist()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Cart force ``[..., 1]`` in ``[-1, 1]`` for observations ``[..., 9]``."""
        return _per_row(self._force, obs, 9)

    def _force(self, x, sin1, sin2, cos1, cos2, vx, w1, w2, _constraint) -> float:
        k = self._gain_row
        force = -(
            k[0] * x
            + k[1] * math.atan2(sin1, cos1)
            + k[2] * math.atan2(sin2, cos2)
            + k[3] * vx
            + k[4] * w1
            + k[5] * w2
        )
        return min(1.0, max(-1.0, force))


def _per_row(control, obs: np.ndarray, obs_dim: int) -> np.ndarray:
    """Apply a scalar controller ``control(*obs_row) -> float`` to ``obs [..., obs_dim]``.

    Scalar ``math`` is ~10x faster than numpy for the single observations of data collection.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape[-1] != obs_dim:
        raise ValueError(f"expected observations of shape [..., {obs_dim}], got {obs.shape}")
    rows = obs.reshape(-1, obs_dim).tolist()
    out = np.array([control(*row) for row in rows], dtype=np.float32)
    return out.reshape(*obs.shape[:-1], 1)


def _dlqr(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Gain ``K [m, n]`` of the infinite-horizon discrete LQR, by Riccati iteration."""
    p = q.copy()
    for _ in range(10_000):
        gain = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ gain)
        if np.max(np.abs(p_next - p)) < 1e-9 * max(1.0, np.max(np.abs(p))):
            return gain
        p = p_next
    raise RuntimeError("discrete Riccati iteration did not converge; is (A, B) stabilisable?")
