"""No host sync in a step of the collection or of the PPO update; one read-back per iteration; the
``compile`` option.

On the CPU nothing runs asynchronously, so these tests count the operations that make the host wait
for a GPU: the Python-level reads of a tensor's data (``item``, ``cpu``, ``numpy``, ``tolist``,
``bool``, ``float``, ``int``, ``__index__``, ``repr``), patched with counting wrappers, and below
them the aten ops that read data back or have a data-dependent shape (``_local_scalar_dense``, which
every ``item``/``bool``/``float``/``int`` and ``if tensor:`` ends in, ``nonzero``, ``masked_select``,
``equal``, ``unique``, indexing with a boolean mask, and ``torch.tensor`` of host data, a blocking
upload on CUDA), seen by a ``TorchDispatchMode``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from env.prompt_env import PromptEnv
from training.config import load_config
from training.trainer import MAPPOTrainer
from training.update import read_scalars

#: ``torch.Tensor`` methods that read the data back to the host
READS = ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__", "__repr__")
#: aten ops that read data back or whose output shape depends on the data
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "equal", "allclose", "is_nonzero", "unique_dim",
            "_unique", "_unique2", "unique_consecutive", "repeat_interleave", "lift_fresh", "lift_fresh_copy"}
MASK_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}


class _SyncOps(TorchDispatchMode):
    def __init__(self, calls: Counter) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls[f"aten.{name}"] += 1
        elif name in MASK_INDEXED and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in args[1]):
            self.calls[f"aten.{name}[bool mask]"] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts, in ``calls``, every host read of tensor data inside the ``with`` block."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self._saved: list[tuple[str, object]] = []
        self._mode = _SyncOps(self.calls)

    def _wrap(self, name: str) -> Callable:
        original = getattr(torch.Tensor, name)
        calls = self.calls

        def counted(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return counted

    def __enter__(self) -> SyncCounter:
        for name in READS:
            self._saved.append((name, vars(torch.Tensor).get(name)))
            setattr(torch.Tensor, name, self._wrap(name))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, original in reversed(self._saved):
            if original is None:
                delattr(torch.Tensor, name)  # it was inherited from torch._C.TensorBase
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()


# ------------------------------------------------------------------------------ the counter itself
_x = torch.tensor([0.5, -1.0, 2.0])
_s = torch.tensor(1.5)
_i = torch.tensor(1)
SYNCS = {
    "item": lambda: _s.item(),
    "bool": lambda: bool(_s > 0),
    "if": lambda: 1 if (_x > 0).any() else 0,
    "comparison": lambda: _s.sum() > 0 and 1,
    "float": lambda: float(_s),
    "int": lambda: int(_s),
    "index": lambda: [1, 2, 3][_i],
    "tolist": lambda: _x.tolist(),
    "numpy": lambda: _x.numpy(),
    "cpu": lambda: _x.cpu(),
    "format": lambda: f"{_s:.3f}",
    "print": lambda: str(_x),
    "nonzero": lambda: torch.nonzero(_x),
    "mask": lambda: _x[_x > 0],
    "masked assignment": lambda: _x.clone().__setitem__(_x > 0, 0.0),
    "upload": lambda: torch.tensor(2.0),
    "equal": lambda: torch.equal(_x, _x),
    "unique": lambda: torch.unique(_x),
}


@pytest.mark.parametrize("what", list(SYNCS))
def test_the_counter_sees_each_kind_of_sync(what):
    with SyncCounter() as counter:
        SYNCS[what]()
    assert counter.calls, what
    with SyncCounter() as counter:  # and nothing on work that stays on the device
        y = (_x * 2).clamp(min=0).sum() + _x.argmax() + torch.where(_x > 0, _x, 0.0).mean()
        torch.full((), 3.0).add_(y)
    assert not counter.calls
    # restored: inherited methods inherited again, torch.Tensor's own ones back
    assert "item" not in vars(torch.Tensor) and torch.Tensor.__bool__ is torch._C.TensorBase.__bool__
    assert torch.Tensor.__repr__.__module__ == "torch._tensor"


# -------------------------------------------------------------------------------------- the trainer
def _trainer(**extra) -> MAPPOTrainer:
    """4 routers, 2 agents of which one is capacity-limited (queues and loads move), small sizes."""
    base = {"env.num_worlds": 16, "env.num_routers": 4, "env.episode_len": 4, "env.congestion_weight": 0.5,
            "env.include_agent_id": True, "network.hidden": "[32, 32]", "ppo.rollout_len": 6,
            "ppo.total_steps": 6 * 2, "ppo.update_epochs": 2, "ppo.num_minibatches": 3, "ppo.gamma": 0.9,
            "seed": 3} | extra
    cfg = load_config(None, [f"{k}={v}" for k, v in base.items()])
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    quality = torch.stack([torch.full((64,), 0.9), torch.rand(64, generator=g)], dim=1)
    env = PromptEnv(emb, quality, torch.rand(64, 2, generator=g) * 1e-3, [1, None], cfg.env, seed=0,
                    validate_actions=False, all_action_rewards=cfg.ppo.pg_estimator == "expected")
    return MAPPOTrainer(cfg, env)


VARIANTS = {
    "default": {},
    # the on-device target_kl stop, over the limit from the second minibatch on
    "target_kl": {"ppo.target_kl": 1e-6, "ppo.lr": 0.05},
    "expected": {"ppo.pg_estimator": "expected", "ppo.clip_vloss": True},
    "ippo_separate": {"network.centralised_critic": False, "network.share_params": False, "ppo.norm_value": False},
    "outages_preferences": {"env.agent_down_prob": 0.3, "env.cost_weight_range": "[20, 2000]",
                            "ppo.ent_coef_end": 0.0, "ppo.norm_adv": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collect_and_update_steps_do_not_sync(variant):
    trainer = _trainer(**VARIANTS[variant])
    for _ in range(2):  # the first iteration (lazy optimizer state, first episodes) and a later one
        with SyncCounter() as counter:
            collected = trainer._collect()  # every step: policy forward, env step, buffer write
        assert not counter.calls, f"host reads while collecting: {dict(counter.calls)}"
        with SyncCounter() as counter:
            pending, extra = trainer._update()  # GAE, value norm, every minibatch step
        assert not counter.calls, f"host reads while updating: {dict(counter.calls)}"
        with SyncCounter() as counter:
            values = read_scalars(collected, pending.metrics, extra)
        assert counter.calls == Counter({"tolist": 1})  # the iteration's one read-back
        trainer._update_metrics(pending, values[1], values[2])
    if variant == "target_kl":
        assert values[1]["early_stop"] == 1.0 and values[1]["grad_steps"] < 6


def test_one_sync_per_iteration():
    trainer = _trainer(**{"ppo.target_kl": 0.01})
    with SyncCounter() as counter:
        history = trainer.train()
    assert len(history) == 2
    assert counter.calls == Counter({"tolist": 2}), dict(counter.calls)


@pytest.mark.slow
def test_no_sync_per_step_on_the_shipped_data(small_config):
    """The real PromptEnv (embeddings, prompt features, cost penalty) as ``agent-router train`` builds it."""
    from training.data import load_splits
    from training.run import build_env

    splits = load_splits(small_config, device="cpu")
    trainer = MAPPOTrainer(small_config, build_env(small_config, splits, "cpu"))
    with SyncCounter() as counter:
        collected = trainer._collect()
    assert not counter.calls, dict(counter.calls)
    with SyncCounter() as counter:
        pending, extra = trainer._update()
    assert not counter.calls, dict(counter.calls)
    values = read_scalars(collected, pending.metrics, extra)
    assert values[1]["grad_steps"] == small_config.ppo.update_epochs * small_config.ppo.num_minibatches


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile (inductor) needs a C++ compiler on the CPU")
def test_compile_trains_as_the_eager_networks():
    """``compile: true`` compiles the forwards in place (tens of seconds on a small CPU): the same
    run to float rounding, the same state_dict keys (a checkpoint loads into uncompiled networks)."""
    runs = []
    for compile_ in (True, False):
        torch.manual_seed(0)
        trainer = _trainer(compile=compile_)
        assert trainer.config.compile is compile_
        torch.manual_seed(1)
        runs.append((trainer, trainer.train()))
    (compiled, h_compiled), (eager, h_eager) = runs
    assert compiled.actor._compiled_call_impl is not None and eager.actor._compiled_call_impl is None
    assert list(compiled.actor.state_dict()) == list(eager.actor.state_dict())
    for key in ("reward", "policy_loss", "value_loss", "approx_kl"):
        assert [m[key] for m in h_compiled] == pytest.approx([m[key] for m in h_eager], rel=1e-4, abs=1e-6), key
    for a, b in zip([*compiled.actor.parameters(), *compiled.critic.parameters()],
                    [*eager.actor.parameters(), *eager.critic.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
