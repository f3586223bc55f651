"""Our GAE and clipped-PPO loss checked against TorchRL as a reference implementation.

References:
    - TorchRL (Bou et al. 2023, arXiv 2306.00577): ``torchrl.objectives.value.functional.
      generalized_advantage_estimate`` and ``torchrl.objectives.ClipPPOLoss`` (torchrl 0.14).
    - Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347 (eq. 7, 9).
    - Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
      Estimation", arXiv 1506.02438 (eq. 16).

Conventions mapped between ``training.ppo.ppo_loss`` and ``ClipPPOLoss`` (read from
``torchrl/objectives/ppo.py`` and ``torchrl/objectives/utils.py`` of torchrl 0.14.1):

- Policy term: ``loss_objective = -mean(min(r A, exp(clamp(log r, log(1-eps), log(1+eps))) A))``
  is our ``policy_loss``; TorchRL clips in log space, identical to clipping ``r`` except exactly on
  the boundary (measure zero on random data).
- Critic term: ``loss_critic = critic_coeff * mean(F.mse_loss(R, V, reduction="none"))`` with
  ``loss_critic_type="l2"``: a plain squared error, no 1/2, already multiplied by its coefficient.
  Ours is ``vf_coef * value_loss`` with ``value_loss = 0.5 * mean((V - R)^2)``. So
  ``critic_coeff = 0.5 * vf_coef`` makes ``loss_critic == vf_coef * value_loss``. (TorchRL's
  default ``loss_critic_type`` is ``"smooth_l1"``, a Huber loss: it must be set to ``"l2"``.)
- Value clipping: TorchRL's ``clip_value=True`` takes the threshold from ``clip_epsilon`` and
  computes ``max(l2(R, V), l2(R, V_old + clamp(V - V_old, -eps, eps)))`` elementwise, with
  ``V_old`` read from the input ``"state_value"`` entry before the critic overwrites it. That is
  exactly our ``clip_vloss=True`` (CleanRL / PPO2), so both variants are compared.
- Entropy: ``loss_entropy = -entropy_coeff * mean(H)`` and ``"entropy"`` is ``mean(H)`` detached;
  ours adds ``-ent_coef * entropy`` to the loss, same sign. TorchRL uses ``dist.entropy()`` when
  the distribution has a closed form (Categorical has) and a Monte-Carlo estimate otherwise; the
  tests make the MC path raise, so the comparison is exact.
- ``clip_fraction``: fraction of samples whose log-ratio was clamped, the same as our ``clipfrac``
  (``|r - 1| > eps``).
- ``kl_approx`` is NOT our ``approx_kl``: TorchRL reports the k1 estimator ``mean(log pi_old -
  log pi_new) = mean(-log r)``; ours is the lower-variance, always non-negative k3 estimator
  ``mean((r - 1) - log r)`` (Schulman 2020, "Approximating KL divergence"). Both estimate
  ``KL(pi_old || pi_new)`` on samples from ``pi_old`` (``E_old[r - 1] = 0``); the tests check the
  exact relation ``approx_kl == kl_approx + mean(r - 1)`` instead of equality.
- Shapes: TorchRL wants a trailing singleton feature dim on advantage, value target and value
  (``[*B, 1]``) and log-probs without it (``[*B]``); the reduction is a mean over every element,
  so a ``[M, N]`` multi-agent batch (the layout of TorchRL's ``("agents", ...)`` sub-tensordicts)
  averages over samples and routers alike, as ours does on the trainer's flattened ``[T * B, N]``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import pytest
import torch
from torch import nn

from policy.networks import Actor, Critic
from training.buffer import RolloutBuffer
from training.gae import generalized_advantage_estimate
from training.ppo import ppo_loss


def _require(name: str) -> ModuleType:
    """Import ``name``: skip the module's tests when it is missing, except under ``CI=true``, where
    a missing reference is an error (the CI installs the ``bench`` extra)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchrl warns when its compiled extension does not load
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            return importlib.import_module(name)
        return pytest.importorskip(name)


_require("torchrl")
_require("tensordict")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule  # noqa: E402
from torchrl.modules import ProbabilisticActor, ValueOperator  # noqa: E402
from torchrl.modules.distributions.utils import has_analytic_entropy  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives import ppo as torchrl_ppo  # noqa: E402
from torchrl.objectives.value.functional import (  # noqa: E402
    generalized_advantage_estimate as torchrl_gae,
)

CLIP, ENT_COEF, VF_COEF = 0.2, 0.05, 0.5
CRITIC_COEFF = 0.5 * VF_COEF  # TorchRL's l2 critic loss has no 1/2; ours has (see the module docstring)


@pytest.fixture(autouse=True)
def _exact_entropy_only(monkeypatch):
    """Fail if ClipPPOLoss ever falls back to a Monte-Carlo entropy estimate."""

    def no_mc(*args, **kwargs):
        raise AssertionError("ClipPPOLoss took the Monte-Carlo entropy path")

    monkeypatch.setattr(torchrl_ppo, "sample_and_log_prob", no_mc)


# --------------------------------------------------------------------------------------------- GAE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("gamma", "gae_lambda"),
    [(0.99, 0.95), (0.9, 0.5), (0.0, 0.95), (0.99, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0), (0.5, 1.0)],
)
def test_gae_matches_torchrl(gamma, gae_lambda, dtype):
    g = torch.Generator().manual_seed(1234)
    T, batch = 37, (5, 3)
    reward = torch.randn(T, *batch, generator=g).to(dtype)
    value = torch.randn(T, *batch, generator=g).to(dtype)
    # independent of value[t + 1] on purpose: it must be the only source of the bootstrap
    next_value = torch.randn(T, *batch, generator=g).to(dtype)
    u = torch.rand(T, *batch, generator=g)
    terminated = u < 0.08
    truncated = (u >= 0.08) & (u < 0.16)  # time limit: done, not terminated
    done = terminated | truncated
    assert terminated[:-1].any() and truncated[:-1].any()  # boundaries inside the trajectory

    adv, ret = generalized_advantage_estimate(reward, value, next_value, done, terminated, gamma, gae_lambda)
    ref_adv, ref_ret = torchrl_gae(gamma, gae_lambda, value, next_value, reward, done, terminated, time_dim=0)

    assert adv.dtype == ret.dtype == dtype and adv.shape == ref_adv.shape == (T, *batch)
    # float32 agrees bit for bit (same recursion, same operation order). In float64 TorchRL is the
    # less precise one: it builds gamma * (1 - terminated) and lmbda * gamma * (1 - done) from int
    # masks, which gives float32 (default dtype) factors, so gamma = 0.99 is rounded (~2e-6 here).
    torch.testing.assert_close(adv, ref_adv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, ref_ret, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------- PPO helpers


def _grads(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True))


def _torchrl_loss(policy: nn.Module, policy_keys: list, value_fn: nn.Module, value_keys: list,
                  clip_vloss: bool, agents: bool) -> ClipPPOLoss:
    """``ClipPPOLoss`` over the SAME modules (no copies): ``policy(*policy_keys) -> logits`` and
    ``value_fn(*value_keys) -> [..., 1]``; ``agents`` puts the per-router entries under ``("agents", ...)``."""
    pre = ("agents",) if agents else ()
    actor = ProbabilisticActor(
        TensorDictModule(policy, in_keys=policy_keys, out_keys=[(*pre, "logits")]),
        in_keys={"logits": (*pre, "logits")},
        out_keys=[(*pre, "action")],
        distribution_class=torch.distributions.Categorical,
    )
    critic = ValueOperator(value_fn, in_keys=value_keys, out_keys=[(*pre, "state_value")])
    loss = ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=CLIP,
        entropy_bonus=True,
        entropy_coeff=ENT_COEF,
        critic_coeff=CRITIC_COEFF,
        loss_critic_type="l2",
        normalize_advantage=False,
        clip_value=clip_vloss,
    )
    loss.set_keys(
        action=(*pre, "action"),
        sample_log_prob=(*pre, "action_log_prob"),
        advantage=(*pre, "advantage"),
        value_target=(*pre, "value_target"),
        value=(*pre, "state_value"),
    )
    return loss


def _compare(ours, ref, ratio: torch.Tensor, params: list[nn.Parameter], clip_vloss: bool, atol: float) -> None:
    """Every comparable term of our :class:`PPOLoss` against ClipPPOLoss's output tensordict."""

    def close(a, b):
        torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=atol)

    # the data must exercise both branches of both clips, or the test proves little
    assert 0 < ours.clipfrac.item() < 1
    if clip_vloss:
        assert 0 < ref["value_clip_fraction"].item() < 1

    close(ours.policy_loss, ref["loss_objective"])
    close(VF_COEF * ours.value_loss, ref["loss_critic"])  # = CRITIC_COEFF * mean((V - R)^2)
    close(ours.entropy, ref["entropy"])
    close(-ENT_COEF * ours.entropy, ref["loss_entropy"])
    ref_total = ref["loss_objective"] + ref["loss_critic"] + ref["loss_entropy"]
    close(ours.loss, ref_total)
    close(ours.clipfrac, ref["clip_fraction"])
    # kl: k3 (ours) vs k1 (TorchRL), related exactly by mean(r - 1)
    close(ours.approx_kl, ref["kl_approx"] + (ratio - 1).mean())
    for g_ours, g_ref in zip(_grads(ours.loss, params), _grads(ref_total, params), strict=True):
        close(g_ours, g_ref)


# --------------------------------------------------------------------------- PPO, single agent [M]


class _Unsqueeze(nn.Module):
    """``[...] -> [..., 1]``: our critic returns one value per router, TorchRL wants a feature dim."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.net(*x).unsqueeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip_vloss", [False, True])
def test_ppo_loss_matches_clip_ppo_loss(clip_vloss, dtype):
    M, D, K, H = 64, 6, 5, 16
    with torch.random.fork_rng():
        torch.manual_seed(0)
        actor_net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, K)).to(dtype)
        critic_net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1)).to(dtype)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(M, D, generator=g).to(dtype)
    with torch.no_grad():
        probs = torch.softmax(actor_net(obs), -1)
        action = torch.multinomial(probs, 1, generator=g).squeeze(-1)
        cur_log_prob = probs.gather(-1, action[:, None]).squeeze(-1).log()
        cur_value = critic_net(obs).squeeze(-1)
    # the data was "collected" by a slightly different policy / critic: ratios spread around 1
    old_log_prob = cur_log_prob + 0.3 * torch.randn(M, generator=g).to(dtype)
    old_value = cur_value + 0.3 * torch.randn(M, generator=g).to(dtype)
    advantage = torch.randn(M, generator=g).to(dtype)
    returns = cur_value + torch.randn(M, generator=g).to(dtype)

    # ours, exactly as the trainer calls it
    dist = torch.distributions.Categorical(logits=actor_net(obs))
    new_log_prob = dist.log_prob(action)
    ours = ppo_loss(new_log_prob, old_log_prob, advantage, critic_net(obs).squeeze(-1), old_value, returns,
                    dist.entropy(), CLIP, ENT_COEF, VF_COEF, clip_vloss)
    assert has_analytic_entropy(dist)

    loss_module = _torchrl_loss(actor_net, ["observation"], critic_net, ["observation"], clip_vloss, agents=False)
    if dtype == torch.float64:
        # ClipPPOLoss stores its coefficients as float32 buffers (float32(0.2) is off by 1.5e-8
        # relative); give them the exact float64 values so float64 can be compared at 1e-10
        for name, v in (("clip_epsilon", CLIP), ("entropy_coeff", ENT_COEF), ("critic_coeff", CRITIC_COEFF),
                        ("clip_value", CLIP if clip_vloss else None)):
            if v is not None:
                setattr(loss_module, name, torch.tensor(v, dtype=dtype))
    td = TensorDict(
        {
            "observation": obs,
            "action": action,
            "action_log_prob": old_log_prob,
            "advantage": advantage.unsqueeze(-1),
            "value_target": returns.unsqueeze(-1),
            "state_value": old_value.unsqueeze(-1),  # V_old for clip_value; the critic writes V into a copy
        },
        batch_size=[M],
    )
    ref = loss_module(td)
    ratio = (new_log_prob - old_log_prob).exp().detach()
    params = [*actor_net.parameters(), *critic_net.parameters()]
    _compare(ours, ref, ratio, params, clip_vloss, atol=1e-5 if dtype == torch.float32 else 1e-10)


# ---------------------------------------------- PPO, parameter-shared MAPPO batch [T * B, N]


@pytest.mark.parametrize("clip_vloss", [False, True])
def test_mappo_batch_matches_clip_ppo_loss(clip_vloss):
    """Our networks (shared actor, centralised critic with agent ids, action masks), data in our
    rollout buffer flattened and minibatched as ``MAPPOTrainer.update`` does, against
    ClipPPOLoss on TorchRL's multi-agent layout (root ``"state"``, ``("agents", ...)`` of batch ``[M, N]``)."""
    T, B, N, D, K = 6, 4, 3, 5, 4
    S = N * D
    with torch.random.fork_rng():
        torch.manual_seed(0)
        actor = Actor(D, N, K, share_params=True, hidden=(16,))
        critic = Critic(D, S, N, centralised=True, share_params=True, hidden=(16,))
        # the policy head is initialised at gain 0.01 (near-uniform); spread it so ratios move
        actor.net.net[-1].weight.data.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(2)

    buf = RolloutBuffer(T, B, N, D, S, K, "cpu")
    buf.obs.copy_(torch.randn(T, B, N, D, generator=g))
    buf.state.copy_(buf.obs.reshape(T, B, S))
    mask = torch.rand(T, B, N, K, generator=g) < 0.7
    mask.scatter_(-1, torch.randint(K, (T, B, N, 1), generator=g), True)  # at least one valid agent
    buf.action_mask.copy_(mask)
    with torch.no_grad():
        probs = actor.distribution(buf.obs, buf.action_mask).probs
        buf.action.copy_(torch.multinomial(probs.reshape(-1, K), 1, generator=g).reshape(T, B, N))
        cur_log_prob = actor.distribution(buf.obs, buf.action_mask).log_prob(buf.action)
        cur_value = critic(buf.obs, buf.state)
    buf.log_prob.copy_(cur_log_prob + 0.3 * torch.randn(T, B, N, generator=g))
    buf.value.copy_(cur_value + 0.3 * torch.randn(T, B, N, generator=g))
    buf.next_value.copy_(torch.randn(T, B, N, generator=g))
    buf.reward.copy_(torch.randn(T, B, N, generator=g))
    u = torch.rand(T, B, generator=g)
    buf.terminated.copy_(u < 0.15)
    buf.truncated.copy_((u >= 0.15) & (u < 0.3))
    buf.compute_advantages(0.99, 0.95)

    # one minibatch of the trainer's update, no advantage normalisation
    idx = next(buf.minibatch_indices(2, torch.Generator().manual_seed(3)))
    batch = buf.ppo_batch()
    obs, state, amask = batch.obs[idx], batch.state[idx], batch.action_mask[idx]
    action, old_log_prob = batch.action[idx], batch.log_prob[idx]
    advantage, returns, old_value = batch.advantage[idx], batch.returns[idx], batch.value[idx]
    M = idx.numel()
    assert obs.shape == (M, N, D) and action.shape == (M, N) and state.shape == (M, S)

    dist = actor.distribution(obs, amask)
    new_log_prob = dist.log_prob(action)
    ours = ppo_loss(new_log_prob, old_log_prob, advantage, critic(obs, state), old_value, returns,
                    dist.entropy(), CLIP, ENT_COEF, VF_COEF, clip_vloss)

    loss_module = _torchrl_loss(
        actor, [("agents", "observation"), ("agents", "action_mask")],
        _Unsqueeze(critic), [("agents", "observation"), "state"], clip_vloss, agents=True,
    )
    td = TensorDict(
        {
            "state": state,
            "agents": TensorDict(
                {
                    "observation": obs,
                    "action_mask": amask,
                    "action": action,
                    "action_log_prob": old_log_prob,
                    "advantage": advantage.unsqueeze(-1),
                    "value_target": returns.unsqueeze(-1),
                    "state_value": old_value.unsqueeze(-1),
                },
                batch_size=[M, N],
            ),
        },
        batch_size=[M],
    )
    ref = loss_module(td)
    assert ref["loss_objective"].shape == ()  # one mean over samples and routers
    ratio = (new_log_prob - old_log_prob).exp().detach()
    _compare(ours, ref, ratio, [*actor.parameters(), *critic.parameters()], clip_vloss, atol=1e-5)
