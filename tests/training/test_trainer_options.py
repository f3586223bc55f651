"""Trainer options, each switched on and off: value normalisation, value clipping, lr annealing,
target_kl early stop, entropy schedule; determinism and exact resume from a saved state."""

import math

import pytest
import torch

from env.prompt_env import PromptEnv
from training.config import load_config
from training.resume import ResumeError, load_trainer_state, save_trainer_state
from training.trainer import MAPPOTrainer
from training.value_norm import ValueNorm


def game(cfg, reward_scale=1.0, seed=0):
    """4 routers, 2 agents: 'big' (quality 0.9, capacity 1 per step) and 'small' (0.6, unbounded)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    quality = torch.stack([torch.full((64,), 0.9), torch.full((64,), 0.6)], dim=1) * reward_scale
    return PromptEnv(emb, quality, torch.zeros(64, 2), [1, None], cfg.env, seed=seed, validate_actions=False)


def config(**extra):
    base = {"env.num_worlds": 16, "env.num_routers": 4, "env.episode_len": 8, "env.congestion_weight": 0.5,
            "env.include_agent_id": True, "network.hidden": "[32, 32]", "ppo.rollout_len": 8,
            "ppo.total_steps": 8 * 6, "ppo.lr": 3e-3, "ppo.gamma": 0.9, "seed": 3}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


KEYS = ("reward", "episode_reward", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
        "explained_variance", "lr", "ent_coef", "value_mean")


def comparable(history):
    return [[m[k] for k in KEYS] for m in history]


# ------------------------------------------------------------- value normalisation
def test_value_norm_tracks_moments_of_everything_seen():
    vn = ValueNorm()
    chunks = [torch.randn(50) * 3 + 7, torch.randn(7, 3) * 0.1 - 2, torch.randn(400) * 10]
    for c in chunks:
        vn.update(c)
    seen = torch.cat([c.flatten() for c in chunks]).double()
    assert math.isclose(float(vn.mean), float(seen.mean()), rel_tol=1e-6)
    assert math.isclose(float(vn.var), float(seen.var(unbiased=False)), rel_tol=1e-4)
    x = torch.randn(5)
    assert torch.allclose(vn.denormalize(vn.normalize(x)), x, atol=1e-5)
    off = ValueNorm(enabled=False)
    off.update(seen)
    assert torch.equal(off.normalize(x), x) and torch.equal(off.denormalize(x), x)


@pytest.mark.parametrize("norm_value", [True, False])
def test_value_norm_in_training(norm_value):
    """Rewards x1000: with normalisation the critic's loss stays O(1) and its stats follow the returns."""
    cfg = config(**{"ppo.norm_value": norm_value})
    trainer = MAPPOTrainer(cfg, game(cfg, reward_scale=1000.0))
    returns = []
    history = trainer.train(lambda m: returns.append(trainer.buffer.returns.clone()))
    seen = torch.cat([r.flatten() for r in returns]).double()
    if norm_value:
        assert math.isclose(float(trainer.value_norm.mean), float(seen.mean()), rel_tol=1e-5)
        assert history[-1]["value_loss"] < 10
        assert history[-1]["value_mean"] > 100
    else:
        assert history[-1]["value_loss"] > 1000
        assert history[-1]["value_mean"] == 0.0


# ---------------------------------------------------------------- schedules and stops
def test_lr_annealing_on_and_off():
    on = MAPPOTrainer(cfg := config(), game(cfg)).train()
    n = len(on)
    assert [m["lr"] for m in on] == pytest.approx([3e-3 * (1 - i / n) for i in range(n)])
    off = MAPPOTrainer(cfg := config(**{"ppo.anneal_lr": False}), game(cfg)).train()
    assert {m["lr"] for m in off} == {3e-3}


def test_actor_and_critic_learning_rates_are_separate_and_anneal_together():
    trainer = MAPPOTrainer(config(**{"ppo.critic_lr": 1e-2}), game(config()))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [3e-3, 1e-2]
    actor_ids = {id(p) for p in trainer.actor.parameters()}
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == actor_ids
    first, last = trainer.train()[0], trainer.history[-1]
    assert (first["lr"], first["critic_lr"]) == (3e-3, 1e-2)
    assert last["critic_lr"] / last["lr"] == pytest.approx(1e-2 / 3e-3)  # one schedule for both
    same = MAPPOTrainer(config(), game(config()))
    assert [g["lr"] for g in same.optimizer.param_groups] == [3e-3, 3e-3]  # unset: the actor's lr


def test_entropy_schedule_on_and_off():
    sched = MAPPOTrainer(cfg := config(**{"ppo.ent_coef": 0.1, "ppo.ent_coef_end": 0.0}), game(cfg)).train()
    n = len(sched)
    assert [m["ent_coef"] for m in sched] == pytest.approx([0.1 * (1 - i / n) for i in range(n)])
    const = MAPPOTrainer(cfg := config(**{"ppo.ent_coef": 0.1}), game(cfg)).train()
    assert {m["ent_coef"] for m in const} == {0.1}


def test_target_kl_stops_the_update_early():
    full = config(**{"ppo.update_epochs": 4, "ppo.num_minibatches": 4, "ppo.lr": 0.05})
    history = MAPPOTrainer(full, game(full)).train()
    assert all(m["grad_steps"] == 16 and m["early_stop"] == 0 for m in history)
    tight = config(**{"ppo.update_epochs": 4, "ppo.num_minibatches": 4, "ppo.lr": 0.05, "ppo.target_kl": 1e-4})
    history = MAPPOTrainer(tight, game(tight)).train()
    assert any(m["early_stop"] == 1 for m in history)
    assert all(m["grad_steps"] < 16 for m in history if m["early_stop"])
    assert all(m["grad_steps"] >= 1 for m in history)  # the first minibatch is always at the old policy


def test_value_clipping_holds_the_critic_near_its_old_values():
    """30 epochs on one batch whose returns are far (~20) from the old values: with clip_vloss the
    clipped branch stops the pull once a value leaves old +- clip_coef, without it the critic chases
    the returns."""
    moved = {}
    for clip_vloss in (True, False):
        cfg = config(**{"ppo.clip_vloss": clip_vloss, "ppo.clip_coef": 0.01, "ppo.update_epochs": 30,
                        "ppo.num_minibatches": 1, "ppo.lr": 0.01, "ppo.anneal_lr": False,
                        "ppo.norm_value": False, "ppo.total_steps": 8})
        torch.manual_seed(0)
        trainer = MAPPOTrainer(cfg, game(cfg, reward_scale=10.0))
        trainer.collect()
        buf = trainer.buffer
        old = buf.value.clone()
        trainer.update()
        with torch.no_grad():
            moved[clip_vloss] = float((trainer.critic(buf.obs, buf.state) - old).abs().median())
        assert float((buf.returns - old).abs().median()) > 10
    assert moved[True] < 0.4 * moved[False], moved


# ---------------------------------------------------------------- determinism and resume
def test_same_seed_same_metrics_with_every_option_on():
    opts = {"ppo.target_kl": 0.05, "ppo.ent_coef_end": 0.0, "ppo.clip_vloss": True}
    runs = []
    for scramble in (1, 2):
        torch.manual_seed(scramble)  # the trainer seeds what it uses
        cfg = config(**opts)
        torch.manual_seed(cfg.seed)
        runs.append(comparable(MAPPOTrainer(cfg, game(cfg)).train()))
    assert runs[0] == runs[1]


def test_resume_continues_as_if_never_stopped(tmp_path):
    cfg = config(**{"ppo.total_steps": 8 * 8, "ppo.target_kl": 0.05, "ppo.ent_coef_end": 0.0})
    torch.manual_seed(cfg.seed)
    straight = MAPPOTrainer(cfg, game(cfg)).train()

    torch.manual_seed(cfg.seed)
    first = MAPPOTrainer(cfg, game(cfg))
    stop_at = 3

    def crash_after_stop_at(m):
        if m["iteration"] == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.train(crash_after_stop_at)
    path = tmp_path / "trainer_state.pt"
    save_trainer_state(path, first.state_dict(), cfg.model_dump(mode="json"))
    del first

    torch.manual_seed(12345)  # a new process: other global RNG state, fresh env and networks
    stored_cfg, state = load_trainer_state(path)
    assert stored_cfg == cfg.model_dump(mode="json")
    env = game(cfg)
    env.reset(seed=99)
    env.step(torch.ones(env.num_worlds, env.num_routers, dtype=torch.long))  # queues and clocks elsewhere
    resumed = MAPPOTrainer(cfg, env)
    resumed.load_state_dict(state)
    rest = resumed.train()
    assert [m["iteration"] for m in rest] == list(range(stop_at + 1, 9))
    assert comparable(rest) == comparable(straight[stop_at:])


def test_resume_refuses_a_state_of_another_shape(tmp_path):
    cfg = config()
    trainer = MAPPOTrainer(cfg, game(cfg))
    state = trainer.state_dict()
    other = config(**{"network.hidden": "[16]"})
    with pytest.raises(RuntimeError):
        MAPPOTrainer(other, game(other)).load_state_dict(state)
    bad = tmp_path / "trainer_state.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ResumeError, match="unreadable trainer state"):
        load_trainer_state(bad)
    with pytest.raises(ResumeError, match="no trainer state"):
        load_trainer_state(tmp_path / "missing")
