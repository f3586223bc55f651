"""A short real training run on a subset of the shipped data, through the API and the CLI."""

import itertools
import json
import subprocess
import sys

import pytest

from policy.checkpoint import load_checkpoint
from training.run import run_training

pytestmark = pytest.mark.slow


def test_short_training_run_beats_random(small_config):
    path = run_training(small_config, progress=False)
    policy = load_checkpoint(path)
    val = policy.meta.eval["val"]
    assert val["policy"]["reward"] > val["random"]["reward"] + 0.05, val
    out = small_config.out_dir
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 30
    for key in ("episode_reward", "approx_kl", "clipfrac", "explained_variance", "policy_loss", "entropy"):
        assert key in lines[-1]
    # it learned: later iterations earn more than the first
    assert sum(m["reward"] for m in lines[-5:]) > sum(m["reward"] for m in lines[:5])
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert policy.meta.data.prompts == 600
    embedding = policy.meta.embedding
    assert (embedding.model, embedding.dim, embedding.encoder) == ("sentence-transformers/all-MiniLM-L6-v2", 384,
                                                                   "transformer")
    assert embedding.serving is not None and embedding.serving.agreement[embedding.serving.encoder] >= 0.99


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, **kw)


def test_cli_train_then_eval_json(small_config, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(small_config.model_dump(mode="json")))  # JSON is YAML
    train = _cli("train", "--config", str(cfg_path), "--set", "ppo.total_steps=160", "--quiet")
    assert train.returncode == 0, train.stderr
    assert "checkpoint:" in train.stdout
    ev = _cli("eval", "--checkpoint", str(small_config.checkpoint_dir), "--split", "test", "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout.strip().splitlines()[-1])["routers"]
    assert {"policy", "random", "best_single", "cheapest", "oracle", "knn", "mlp"} <= set(result)
    for m in result.values():
        assert set(m) >= {"quality", "cost_usd_per_1k", "reward", "aiq"}
    assert result["oracle"]["quality"] >= result["best_single"]["quality"] >= result["random"]["quality"]
    table = _cli("eval", "--checkpoint", str(small_config.checkpoint_dir))
    assert table.returncode == 0 and "best_single" in table.stdout and "oracle" in table.stdout


def test_cli_resume_continues_a_run(small_config, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(small_config.model_dump(mode="json")))
    first = _cli("train", "--config", str(cfg_path), "-s", "ppo.total_steps=96", "-s", "save_every=2", "--quiet")
    assert first.returncode == 0, first.stderr
    out = small_config.out_dir
    assert (out / "trainer_state.pt").is_file()
    more = _cli("train", "--resume", str(out), "-s", "ppo.total_steps=160", "--quiet")
    assert more.returncode == 0, more.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == list(range(1, 11))
    assert len(list(small_config.checkpoint_dir.iterdir())) == 2
    missing = _cli("train", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error:") and "no trainer state" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_validation_reward_tensorboard_and_keep_best(small_config):
    """Validation figures beside the training reward (metrics.jsonl, TensorBoard, the plot), and
    keep_best checkpoints the best validated weights."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.evaluation.offline import policy_choices, summarize

    ppo = small_config.ppo.model_copy(update={"total_steps": 160})
    cfg = small_config.model_copy(update={"ppo": ppo, "eval_every": 3, "keep_best": True})
    policy = load_checkpoint(run_training(cfg, progress=False))
    lines = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    validated = [m["iteration"] for m in lines if "val_reward" in m]
    assert validated == [3, 6, 9, 10]  # every 3, and the last
    best = max((m for m in lines if "val_reward" in m), key=lambda m: m["val_reward"])
    assert policy.meta.eval["selected"] == {"iteration": best["iteration"], "val_reward": best["val_reward"]}
    # the checkpoint is the best validated one: its greedy validation reward is the one logged then
    from training.data import load_splits

    splits = load_splits(cfg)
    val = splits.splits["val"]
    choice = policy_choices(policy, splits.embeddings("val"), val.prompt_tokens)
    again = summarize(choice, val.quality, val.cost_usd, 0.0)
    assert again["reward"] == pytest.approx(best["val_reward"], abs=1e-6)
    board = EventAccumulator(str(cfg.out_dir / "tensorboard"))
    board.Reload()
    assert {"reward", "val_reward", "approx_kl", "lr"} <= set(board.Tags()["scalars"])
    assert [e.value for e in board.Scalars("val_reward")] == pytest.approx([m["val_reward"] for m in lines
                                                                            if "val_reward" in m])


def test_tune_searches_prunes_and_reports_the_best(small_config, tmp_path):
    """Three tiny trials through the CLI: every trial is scored on validation, the best is printed
    as -s overrides, and its checkpoint holds its best validated weights."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg = small_config.model_copy(update={"eval_every": 2, "ppo": small_config.ppo.model_copy(
        update={"total_steps": 96})})
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    out = tmp_path / "tune"
    proc = _cli("tune", "--config", str(cfg_path), "--trials", "3", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["trials"]) == 3 and {t["state"] for t in result["trials"]} <= {"COMPLETE", "PRUNED"}
    done = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    assert result["best_value"] == max(t["value"] for t in done)
    assert set(result["best_params"]) >= {"ppo.lr", "ppo.ent_coef", "ppo.pg_estimator", "network.hidden"}
    best = load_checkpoint(result["best_checkpoint"])
    assert best.meta.eval["selected"]["val_reward"] == result["best_value"]
    assert best.meta.training["ppo"]["lr"] == pytest.approx(result["best_params"]["ppo.lr"])
    assert json.loads((out / "study.json").read_text())["best_value"] == result["best_value"]
    assert all(f"-s {k}=" in " ".join(result["best_overrides"]) for k in result["best_params"])


def test_one_policy_for_every_trade_off(small_config):
    """Trained with env.cost_weight_range: the checkpoint records the range, the eval sweeps the one
    checkpoint over the baselines' λ grid, and the logged preference rebuilds the same obs."""
    import numpy as np
    import torch

    from contract.experience import ExperienceRecord
    from tests.harness import sample_context, sample_feedback
    from training.data import load_splits
    from training.evaluation import fit_predictors, offline_report, wtp_grid
    from training.evaluation.offline import policy_choices
    from training.retrain.trajectories import build_batch

    env = small_config.env.model_copy(update={"cost_weight_range": (20.0, 2000.0), "cost_weight_zero_share": 0.5})
    ppo = small_config.ppo.model_copy(update={"total_steps": 1600})
    cfg = small_config.model_copy(update={"env": env, "ppo": ppo})
    policy = load_checkpoint(run_training(cfg, progress=False))
    layout = policy.layout
    assert layout.cost_preference and layout.cost_weight_max == 2000.0 and layout.default_cost_weight == 0.0
    splits = load_splits(cfg)
    train, val, emb = splits.splits["train"], splits.splits["val"], splits.embeddings("val")
    def mean_cost(w: float) -> float:
        choice = policy_choices(policy, emb, val.prompt_tokens, cost_weight=w)
        return float(val.cost_usd[np.arange(len(val)), choice].mean())

    sweep = [0.0, *np.geomspace(1.0, 1e6, 25).tolist()]
    costs = [mean_cost(w) for w in sweep]
    assert costs[-1] < 0.9 * costs[0]  # a strong preference for cheap agents routes to cheaper ones
    # monotone: a larger cost_weight never raises the mean cost on the validation split
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(costs)), costs
    # calibrate (the CLI) to a cost half-way: the smallest cost_weight that meets it
    target = 1000 * (costs[0] + costs[-1]) / 2
    out = subprocess.run([sys.executable, "-m", "cli", "calibrate", "--checkpoint", str(policy.path),
                          "--target-cost-usd-per-1k", str(target), "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["split"] == "val" and found["cost_usd_per_1k"] <= target
    assert found["cost_usd_per_1k"] == pytest.approx(1000 * mean_cost(found["cost_weight"]))
    assert 1000 * mean_cost(found["cost_weight"] * 0.95) > target  # the boundary, not just any weight
    predictors = fit_predictors(splits.embeddings("train"), train, seed=0)
    report = offline_report(policy, train, val, emb, 0.0, predictors)
    grid = wtp_grid(*predictors["knn"].predict(emb), 32)
    assert [p["cost_weight"] for p in report["curves"]["policy"]] == pytest.approx(grid.tolist())
    assert np.isfinite(report["routers"]["policy"]["aiq"])
    # a logged decision at cost_weight 300: the retrain rebuilds its obs with that preference
    ctx = sample_context(agents=policy.agents, cost_weight=300.0)
    record = ExperienceRecord.join(ctx, sample_feedback(1.0, cost_usd=0.001))
    batch = build_batch([("1", record.to_json_dict())], policy, cost_weight=0.0)
    assert batch.obs[0, 0, layout.preference_cols].item() == pytest.approx(
        layout.preference_feature(torch.tensor(300.0)).item())
    assert batch.reward[0, 0].item() == pytest.approx(1.0 - 300.0 * 0.001)
