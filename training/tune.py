"""``agent-router tune``: an Optuna search over the main hyper-parameters, scored on validation.

Each trial trains the configured run with sampled hyper-parameters (TPE sampler, Bergstra et al.
2011) and reports its greedy validation reward every ``eval_every`` iterations; a trial below the
median of earlier trials at the same iteration is pruned (median pruner). A trial's score is its
best validation reward (its checkpoint keeps those weights). The test split is never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import UserError
from training.config import TrainConfig, load_config

#: name -> (kind, arguments) of :func:`suggest`; the hyper-parameters the seeds name and users tune
SEARCH_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "ppo.lr": ("log", (1e-4, 3e-3)),
    "ppo.critic_lr": ("log", (1e-4, 3e-3)),
    "ppo.ent_coef": ("log", (1e-4, 3e-2)),
    "ppo.clip_coef": ("float", (0.1, 0.3)),
    "ppo.update_epochs": ("int", (2, 8)),
    "ppo.num_minibatches": ("choice", (2, 4, 8)),
    "ppo.pg_estimator": ("choice", ("sampled", "expected")),
    "network.hidden": ("choice", ("[128, 128]", "[256, 256]", "[512, 256]")),
}


@dataclass
class TuneResult:
    """What a search found.

    Attributes:
        best_value: the best trial's best validation reward; best_params: its hyper-parameters;
        best_overrides: them as ``-s key=value`` arguments; best_checkpoint: its checkpoint.
        trials: every trial's number, state (``COMPLETE``, ``PRUNED``, ``FAIL``), value and params.
    """

    best_value: float
    best_params: dict[str, Any]
    best_overrides: list[str]
    best_checkpoint: str | None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_params": self.best_params,
                "best_overrides": self.best_overrides, "best_checkpoint": self.best_checkpoint,
                "trials": self.trials}


def suggest(trial: Any, space: dict[str, tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """One value per hyper-parameter of ``space`` from an ``optuna.Trial``."""
    out: dict[str, Any] = {}
    for name, (kind, args) in space.items():
        if kind == "log":
            out[name] = trial.suggest_float(name, *args, log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, *args)
        elif kind == "int":
            out[name] = trial.suggest_int(name, *args)
        else:
            out[name] = trial.suggest_categorical(name, list(args))
    return out


def run_tune(base: TrainConfig, trials: int, out_dir: str | Path, seed: int = 0,
             space: dict[str, tuple[str, tuple[Any, ...]]] | None = None) -> TuneResult:
    """Search ``space`` (default :data:`SEARCH_SPACE`) for ``trials`` trials around ``base``.

    Trial ``n`` writes its run to ``out_dir/trial-n`` (metrics, checkpoint); ``out_dir/study.json``
    holds the result.

    Raises:
        UserError: ``base.eval_every`` is 0 (nothing to score), or no trial completed.
    """
    import optuna

    if not base.eval_every:
        raise UserError("tune scores trials on validation: set eval_every > 0")
    space = SEARCH_SPACE if space is None else space
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = base.model_dump(mode="json")
    checkpoints: dict[int, str] = {}

    def objective(trial: optuna.Trial) -> float:
        from training.run import run_training

        params = suggest(trial, space)
        run_dir = out_dir / f"trial-{trial.number}"
        overrides = [f"{k}={v}" for k, v in params.items()] + [
            f"out_dir={run_dir}", f"checkpoint_dir={run_dir / 'checkpoints'}", "keep_best=true", "tensorboard=false"]
        cfg = load_config(None, overrides, base=tree)

        def report(iteration: int, val_reward: float) -> None:
            trial.report(val_reward, step=iteration)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_reward {val_reward:.4f} at iteration {iteration}")

        path = run_training(cfg, progress=False, on_validation=report)
        checkpoints[trial.number] = str(path)
        best = json.loads((run_dir / "eval.json").read_text(encoding="utf-8")).get("selected")
        return float(best["val_reward"]) if best else float("nan")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    study.optimize(objective, n_trials=trials, catch=(ValueError, RuntimeError))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"no trial of {trials} completed (all pruned or failed)")
    best = study.best_trial
    result = TuneResult(
        best_value=float(best.value),
        best_params=dict(best.params),
        best_overrides=[f"-s {k}={v}" for k, v in best.params.items()],
        best_checkpoint=checkpoints.get(best.number),
        trials=[{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
                for t in study.trials],
    )
    (out_dir / "study.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result
