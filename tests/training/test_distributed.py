"""Data-parallel training: 2 CPU processes with gloo, as ``torchrun --nproc_per_node 2`` runs them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.training.test_trainer_options import config, game
from training.trainer import MAPPOTrainer

WORLDS = 16
FIELDS = ("obs", "state", "action_mask", "action", "log_prob", "reward", "value", "next_value",
          "terminated", "truncated")
OPTS = {"ppo.num_minibatches": 1, "ppo.update_epochs": 3, "ppo.norm_adv": False, "ppo.total_steps": 8 * 5}


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in [*trainer.actor.parameters(), *trainer.critic.parameters()]])


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # 1. one update on this rank's half of a fixed rollout of WORLDS worlds
        full = torch.load(Path(out) / "rollout.pt")
        cfg = config(**{"env.num_worlds": WORLDS // world, **OPTS})
        torch.manual_seed(0)
        trainer = MAPPOTrainer(cfg, game(cfg))
        lo, hi = rank * WORLDS // world, (rank + 1) * WORLDS // world
        for name in FIELDS:
            getattr(trainer.buffer, name).copy_(full[name][:, lo:hi])
        trainer.update()
        torch.save(_params(trainer), Path(out) / f"update.rank{rank}.pt")
        # 2. a short training run where each rank simulates its own worlds (other seeds)
        cfg = config(**{"env.num_worlds": WORLDS // world, "seed": 3 + rank, "ppo.target_kl": 0.02})
        torch.manual_seed(3 + rank)  # different initial weights: DDP must broadcast rank 0's
        trainer = MAPPOTrainer(cfg, game(cfg))
        history = trainer.train()
        torch.save(_params(trainer), Path(out) / f"train.rank{rank}.pt")
        (Path(out) / f"history.rank{rank}.json").write_text(json.dumps(history))
        dist.barrier()  # both ranks are done before either tears the group down (a gloo teardown race aborts)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_and_each_other(tmp_path):
    # one process holding all WORLDS worlds collects the rollout and updates on all of it
    cfg = config(**{"env.num_worlds": WORLDS, **OPTS})
    torch.manual_seed(0)
    single = MAPPOTrainer(cfg, game(cfg))
    single.collect()
    torch.save({name: getattr(single.buffer, name).clone() for name in FIELDS}, tmp_path / "rollout.pt")
    single.update()
    expected = _params(single)

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    r0, r1 = (torch.load(tmp_path / f"update.rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0, r1), "ranks diverged after one update"
    assert not torch.equal(r0, _params(MAPPOTrainer(cfg, game(cfg))))  # the update did move them
    torch.testing.assert_close(r0, expected, atol=1e-5, rtol=1e-4)

    t0, t1 = (torch.load(tmp_path / f"train.rank{r}.pt") for r in (0, 1))
    assert torch.equal(t0, t1), "ranks diverged during training"
    h0, h1 = (json.loads((tmp_path / f"history.rank{r}.json").read_text()) for r in (0, 1))
    assert [m["reward"] for m in h0] != [m["reward"] for m in h1]  # they did see different worlds
    assert [m["grad_steps"] for m in h0] == [m["grad_steps"] for m in h1]  # target_kl stop agreed


@pytest.mark.slow
def test_torchrun_cli_trains_on_two_processes(small_config, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(small_config.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cli", "train",
                          "--config", str(cfg_path), "-s", "ppo.total_steps=64", "-q"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("checkpoint:") == 1  # rank 0 alone writes it
    out = Path(small_config.out_dir)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert (out / "trainer_state.rank0.pt").is_file() and (out / "trainer_state.rank1.pt").is_file()
    s0, s1 = (torch.load(out / f"trainer_state.rank{r}.pt", weights_only=True)["trainer"] for r in (0, 1))
    for k, v in s0["actor"].items():
        assert torch.equal(v, s1["actor"][k]), k
    assert not torch.equal(s0["env"]["prompt_idx"], s1["env"]["prompt_idx"])
