"""Standard multi-agent benchmarks behind the trainer's :class:`env.base.MultiAgentEnv` interface.

- :class:`~env.adapters.vmas_env.VmasEnv`: VMAS scenarios (Bettini et al. 2022, arXiv 2207.03530),
  vectorised on a torch device.
- :class:`~env.adapters.pettingzoo_env.PettingZooEnv`: ``B`` copies of a PettingZoo ParallelEnv,
  e.g. the MPE tasks (Lowe et al. 2017, arXiv 1706.02275) from ``mpe2``.

Both return obs ``[B, N, D]``, state ``[B, N * D]``, action mask ``[B, N, A]`` bool, reward ``[B, N]``
and disjoint ``terminated``/``truncated`` ``[B]`` bool, with auto-reset (see :mod:`env.base`).
Neither imports its simulator until an env is built: the extras ``vmas`` and ``pettingzoo`` are optional.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from env.adapters._common import MissingExtraError, UnknownEnvError, check_adapter_specs, require
from env.adapters.pettingzoo_env import PettingZooEnv
from env.adapters.vmas_env import VmasEnv

__all__ = ["MissingExtraError", "PettingZooEnv", "UnknownEnvError", "VmasEnv", "check_adapter_specs",
           "make_benchmark_env"]

# where ``pettingzoo:<name>`` is looked up, in order (MPE moved from pettingzoo.mpe to mpe2 in 2025)
_PETTINGZOO_PACKAGES = ("mpe2", "pettingzoo.butterfly", "pettingzoo.sisl", "pettingzoo.classic")


def _pettingzoo_module(name: str):
    """The module of a PettingZoo env name (``simple_spread_v3`` or a dotted ``mpe2.simple_spread_v3``)."""
    candidates = [name] if "." in name else [f"{pkg}.{name}" for pkg in _PETTINGZOO_PACKAGES]
    for path in candidates:
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue
        if hasattr(module, "parallel_env"):
            return module
    if name.startswith("simple"):
        require("mpe2", "pettingzoo")  # the MPE tasks live in mpe2, part of the pettingzoo extra
    raise UnknownEnvError(f"pettingzoo:{name}: no module with a parallel_env among {', '.join(candidates)}")


def make_benchmark_env(name: str, num_worlds: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                       **kwargs: Any) -> VmasEnv | PettingZooEnv:
    """Build a benchmark env by name.

    Args:
        name: ``"vmas:<scenario>"`` (``"vmas:navigation"``; ``kwargs`` may hold ``max_steps``, default 100,
            and scenario arguments such as ``n_agents=3``) or ``"pettingzoo:<env module>"``
            (``"pettingzoo:simple_spread_v3"``; ``kwargs`` go to its ``parallel_env``, with
            ``continuous_actions=False`` by default for the MPE tasks).
        num_worlds: ``B``.
        seed: the env's seed.
        device: torch device of the returned tensors (and of the VMAS simulation).

    Raises:
        UnknownEnvError (a ValueError): an unknown prefix, scenario or env module.
        MissingExtraError (a ModuleNotFoundError): the simulator is not installed; the one-line message
            says which extra to install.
    """
    kind, _, env_name = name.partition(":")
    if kind == "vmas" and env_name:
        require("vmas", "vmas")
        import vmas

        known = [*vmas.scenarios, *vmas.mpe_scenarios, *vmas.debug_scenarios]
        if env_name not in known:
            raise UnknownEnvError(f"{name}: unknown VMAS scenario (known: {', '.join(sorted(known))})")
        return VmasEnv(env_name, num_worlds=num_worlds, device=device, seed=seed, **kwargs)
    if kind == "pettingzoo" and env_name:
        require("pettingzoo", "pettingzoo")
        module = _pettingzoo_module(env_name)
        if module.__name__.startswith("mpe2."):
            kwargs.setdefault("continuous_actions", False)
        return PettingZooEnv(lambda: module.parallel_env(**kwargs), num_worlds=num_worlds, seed=seed, device=device)
    raise UnknownEnvError(f"unknown benchmark env {name!r}: expected 'vmas:<scenario>' (e.g. 'vmas:navigation') "
                          "or 'pettingzoo:<env>' (e.g. 'pettingzoo:simple_spread_v3')")
