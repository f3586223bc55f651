"""The shared PPO update (training.update), the buffer's explicit ``add`` and RetrainConfig's ``ppo``."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from policy.networks import Actor, Critic
from training.batch import PPOBatch
from training.buffer import RolloutBuffer
from training.config import PPOConfig
from training.ppo import ppo_loss
from training.retrain.config import PPO_DEFAULTS, RetrainConfig
from training.update import minibatch_indices, ppo_update

M, N, D, K = 12, 2, 5, 4
S = N * D


def _setup(log_prob_shift: float = 0.3):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        actor = Actor(D, N, K, share_params=True, hidden=(16,))
        critic = Critic(D, S, N, centralised=True, share_params=True, hidden=(16,))
        actor.net.net[-1].weight.data.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(M, N, D, generator=g)
    mask = torch.rand(M, N, K, generator=g) < 0.7
    mask[..., 0] = True
    with torch.no_grad():
        dist = actor.distribution(obs, mask)
        action = dist.sample()
        old_log_prob = dist.log_prob(action) + log_prob_shift * torch.randn(M, N, generator=g)
    data = dict(obs=obs, state=obs.reshape(M, S), action_mask=mask, action=action, old_log_prob=old_log_prob,
                advantage=torch.randn(M, N, generator=g), returns=torch.randn(M, N, generator=g),
                old_value=torch.randn(M, N, generator=g))
    return actor, critic, data


def _run(actor, critic, data, ppo: PPOConfig, lr: float = 1e-2, seed: int = 0):
    params = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr)
    batch = PPOBatch(obs=data["obs"], state=data["state"], action_mask=data["action_mask"], action=data["action"],
                     log_prob=data["old_log_prob"], advantage=data["advantage"], returns=data["returns"],
                     value=data["old_value"])
    return ppo_update(actor, critic, optimizer, batch, ppo, torch.Generator().manual_seed(seed)).read()


def test_minibatch_indices_are_a_permutation_in_ceil_sized_chunks():
    chunks = minibatch_indices(10, 3, torch.Generator().manual_seed(0))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert sorted(torch.cat(chunks).tolist()) == list(range(10))
    assert [len(c) for c in minibatch_indices(2, 4, torch.Generator())] == [1, 1]


def test_epochs_times_minibatches_steps():
    actor, critic, data = _setup()
    out = _run(actor, critic, data, PPOConfig(update_epochs=2, num_minibatches=3))
    assert out["grad_steps"] == 6 and out["early_stop"] == 0.0
    assert set(out) == {"policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_steps", "early_stop"}


def test_target_kl_stops_before_the_first_step_over_it():
    actor, critic, data = _setup(log_prob_shift=0.5)
    before = [p.clone() for p in [*actor.parameters(), *critic.parameters()]]
    out = _run(actor, critic, data, PPOConfig(update_epochs=2, num_minibatches=3, target_kl=1e-6))
    assert out["grad_steps"] == 0 and out["early_stop"] == 1.0
    assert out["approx_kl"] > 1.5e-6
    assert all(torch.equal(a, b) for a, b in zip(before, [*actor.parameters(), *critic.parameters()], strict=True))


def test_target_kl_allows_the_on_policy_first_step():
    actor, critic, data = _setup(log_prob_shift=0.0)  # old policy = current: the first approx_kl is ~0
    out = _run(actor, critic, data, PPOConfig(update_epochs=2, num_minibatches=3, target_kl=1e-4), lr=5.0)
    assert out["grad_steps"] == 1 and out["early_stop"] == 1.0


def test_one_full_batch_step_matches_a_hand_computed_step():
    actor, critic, data = _setup()
    ref_actor, ref_critic = copy.deepcopy(actor), copy.deepcopy(critic)
    ppo = PPOConfig(update_epochs=1, num_minibatches=1, ent_coef=0.05, clip_vloss=True, max_grad_norm=0.1)
    out = _run(actor, critic, data, ppo, lr=0.1)

    dist = ref_actor.distribution(data["obs"], data["action_mask"])
    adv = data["advantage"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ref = ppo_loss(dist.log_prob(data["action"]), data["old_log_prob"], adv, ref_critic(data["obs"], data["state"]),
                   data["old_value"], data["returns"], dist.entropy(), ppo.clip_coef, ppo.ent_coef, ppo.vf_coef,
                   clip_vloss=True)
    ref.loss.backward()
    params = [*ref_actor.parameters(), *ref_critic.parameters()]
    torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
    with torch.no_grad():
        for p in params:
            p -= 0.1 * p.grad

    assert out["grad_steps"] == 1
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        assert out[k] == pytest.approx(getattr(ref, k).item(), abs=1e-6), k
    for p, q in zip([*actor.parameters(), *critic.parameters()], params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_buffer_add_requires_every_field():
    T, B = 2, 3
    buf = RolloutBuffer(T, B, N, D, S, K, "cpu")
    step = dict(obs=torch.ones(B, N, D), state=torch.ones(B, S), action_mask=torch.ones(B, N, K, dtype=torch.bool),
                action=torch.ones(B, N, dtype=torch.long), log_prob=torch.ones(B, N), reward=torch.ones(B, N),
                value=torch.ones(B, N), next_value=torch.ones(B, N), terminated=torch.ones(B, dtype=torch.bool),
                truncated=torch.ones(B, dtype=torch.bool))
    buf.add(1, **step)
    assert all(bool((getattr(buf, k)[1] == v).all()) for k, v in step.items())
    assert not buf.reward[0].any()
    missing = {k: v for k, v in step.items() if k != "next_value"}
    with pytest.raises(TypeError, match="next_value"):
        buf.add(0, **missing)
    with pytest.raises(TypeError):
        buf.add(0, **step, advantage=torch.ones(B, N))


def test_retrain_config_ppo_defaults_and_shorthand():
    cfg = RetrainConfig()
    assert {k: getattr(cfg.ppo, k) for k in PPO_DEFAULTS} == PPO_DEFAULTS
    assert cfg.ppo.update_epochs == 10 and cfg.ppo.ent_coef == 0.0 and cfg.gamma is None

    short = RetrainConfig.model_validate({"update_epochs": 20, "lr": 1e-3})
    dotted = RetrainConfig.model_validate({"ppo.update_epochs": 20, "ppo.lr": 1e-3})
    nested = RetrainConfig(ppo={"update_epochs": 20, "lr": 1e-3})
    assert short == dotted == nested
    assert short.ppo.update_epochs == 20 and short.ppo.lr == 1e-3 and short.ppo.ent_coef == 0.0
    assert RetrainConfig(update_epochs=2).ppo.update_epochs == 2
    assert RetrainConfig(ppo=PPOConfig(ent_coef=0.3), update_epochs=3).ppo.model_dump() == \
        PPOConfig(ent_coef=0.3, update_epochs=3).model_dump()
    assert RetrainConfig(gamma=0.5).gamma == 0.5
    assert RetrainConfig.model_validate(short.model_dump()) == short


@pytest.mark.parametrize("fields", [{"foo": 1}, {"ppo.foo": 1}, {"ppo": {"foo": 1}}, {"update_epochs": 0},
                                    {"ppo.update_epochs": 0}])
def test_retrain_config_rejects_unknown_or_invalid(fields):
    with pytest.raises(ValidationError):
        RetrainConfig.model_validate(fields)
