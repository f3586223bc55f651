"""The ``agent-router`` command line: ``train``, ``tune``, ``eval``, ``calibrate``, ``serve``, ``retrain``, ``embed``,
``data convert``, ``keys new``, ``agents serve``, ``demo``.

A user's mistake (bad file, bad option, bad checkpoint) ends with one line ``error: ...`` on
stderr and exit code 2, never a traceback. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from agents.cli import app as agents_app
from env.errors import UserError

app = typer.Typer(
    name="agent-router",
    help="Train, evaluate and serve a learned router for multi-agent LLM systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Routing datasets: convert upstream layouts to the project's format.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="Client keys of the OpenAI-compatible proxy (ROUTER_API_KEYS).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML training config.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. ppo.lr=1e-3 (repeatable).")]
DEFAULT_CONFIG = Path("configs/default.yaml")


def _config(config: Path | None, overrides: list[str] | None):
    from training.config import load_config

    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides or [])


@app.command()
def init(
    agents: Annotated[Path, typer.Option(help="The agents file (JSON or YAML): name, description, price, "
                                              "capacity, and optionally prior_quality, per agent.")],
    out: Annotated[Path, typer.Option(help="Checkpoint root to write the policy under.")] = Path("checkpoints"),
    cost_weight: Annotated[float, typer.Option(
        help="Reward per USD the learner will use: reward = quality - cost_weight * cost_usd.", min=0.0)] = 0.0,
    embedding_model: Annotated[str, typer.Option(help="Sentence embedding model of the prompts.")] = "all-MiniLM-L6-v2",
) -> None:
    """Write a serving policy from an agents file alone, with no outcome data (a cold start).

    The policy explores every agent from its first request (serve with explore on) and learns from
    the logged feedback, round after round of `agent-router retrain`. Use `agent-router train`
    instead to start from a dataset with every agent's outcome on each prompt.
    """
    from training.cold_start import init_policy

    path = init_policy(agents, out, embedding_model=embedding_model, cost_weight=cost_weight)
    typer.echo(f"checkpoint: {path}")
    typer.echo(f"serve it: agent-router serve --checkpoint {out}; learn from feedback: agent-router retrain "
               f"--checkpoint {out} --every-records 200")


@app.command()
def train(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(
        help="Run directory (out_dir) of a run to continue from its trainer_state.pt; its config is the "
             "base, --config/--set override it (e.g. -s ppo.total_steps=16000 to train longer).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a MAPPO router on a routing dataset and write a checkpoint.

    Writes metrics.jsonl, reward_curve.png, eval.json and trainer_state.pt to out_dir and a new
    version directory (policy.safetensors + policy.json) under checkpoint_dir. Under
    `torchrun --nproc_per_node P -m router.cli train ...` the worlds are split across P processes.
    """
    from training.config import load_config
    from training.distributed import launched_by_torchrun
    from training.resume import load_trainer_state, state_file
    from training.run import run_training

    state = None
    if resume is not None:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        path = state_file(resume, rank, world) if resume.is_dir() else resume
        stored, state = load_trainer_state(path)
        cfg = load_config(config, overrides or [], base=stored)
    else:
        cfg = _config(config, overrides)
    path = run_training(cfg, progress=not quiet, resume_state=state)
    if path is not None:
        typer.echo(f"checkpoint: {path}")
        typer.echo(f"metrics: {Path(cfg.out_dir) / 'metrics.jsonl'}  curve: {Path(cfg.out_dir) / 'reward_curve.png'}"
                   + ("" if not launched_by_torchrun() else "  (rank 0's worlds)"))


@app.command()
def tune(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials to run.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory of the trials' runs and study.json.")] = Path("runs/tune"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Search the main hyper-parameters (Optuna: TPE sampler, median pruner), scored by each
    trial's greedy validation reward; prints the best as -s overrides for train."""
    from training.tune import run_tune

    result = run_tune(_config(config, overrides), trials, out, seed=seed)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for t in result.trials:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        typer.echo(f"trial {t['number']:>3}  {t['state']:<8}  val_reward {value}")
    typer.echo(f"best val_reward {result.best_value:.4f}: agent-router train {' '.join(result.best_overrides)}")
    typer.echo(f"its checkpoint: {result.best_checkpoint}  (all trials: {out / 'study.json'})")


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Version directory, or a directory of versions (newest).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="Config of the data (default: the checkpoint's own).")] = None,
    overrides: SetOpt = None,
    cost_weight: Annotated[float | None, typer.Option(help="Reward per USD (default: the checkpoint's).")] = None,
    curve: Annotated[list[Path] | None, typer.Option(
        help="More checkpoints for the policy's cost-quality curve (repeatable): a version directory, or a "
             "directory whose every version is a point (e.g. one per env.cost_weight).")] = None,
    capacity: Annotated[list[str] | None, typer.Option(
        help="Override an agent's capacity for the capacity-limited table, NAME=N requests per env step "
             "(or NAME=none); repeatable.")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the MLP and the capacity env (default: the config's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps per router in the capacity table.", min=1)] = None,
    plot_dir: Annotated[Path | None, typer.Option(help="Write pareto.png and per_task.png here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a checkpoint on a dataset split against baselines, curves and capacity limits.

    Baselines: random, best single agent, cheapest, oracle, kNN and MLP on the same embeddings, the
    Zero router (mixtures of single agents), and in PromptEnv (when any agent has a capacity) a
    load-aware greedy rule. Figures: mean quality, USD per 1k requests, reward, AIQ (RouterBench),
    per task; APGR and CPT(50%/80%) (RouteLLM) when there are two agents.
    """
    from training.checkpoint import load_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits
    from training.evaluation.plots import write_plots
    from training.evaluation.report import (
        format_report,
        load_curve_policies,
        parse_capacity_overrides,
        run_eval,
        to_json,
    )

    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, not {split!r}")
    policy = load_checkpoint(checkpoint)
    cfg = checkpoint_config(policy.meta, config, overrides)
    splits = load_splits(cfg)
    if splits.dataset.agent_names != policy.agents:
        raise UserError(f"{cfg.data.agents}: agents {splits.dataset.agent_names} do not match the "
                        f"checkpoint's {policy.agents}")
    caps = parse_capacity_overrides(capacity, policy.agents)
    capacities = [caps.get(a.name, a.capacity) for a in splits.dataset.agents]
    curve_policies = load_curve_policies(curve or [], policy.agents)
    weight = cfg.env.cost_weight if cost_weight is None else cost_weight
    report = run_eval(policy, splits.splits["train"], splits.splits[split], splits.embeddings("train"),
                      splits.embeddings(split), weight, env_config=cfg.env, capacities=capacities,
                      curve_policies=curve_policies, seed=cfg.seed if seed is None else seed, steps=steps,
                      split_name=split)
    if plot_dir is not None:
        report["plots"] = [str(p) for p in write_plots(report, plot_dir)]
    typer.echo(to_json(report) if as_json else format_report(report))


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Option(help="Version directory, or a directory of versions (newest).")],
    target_cost_usd_per_1k: Annotated[float | None, typer.Option(
        help="Mean cost at most this, USD per 1,000 requests.")] = None,
    target_share: Annotated[str | None, typer.Option(
        help="AGENT=P: at most the fraction P of requests to AGENT (RouteLLM's calibration).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "val",
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="Config of the data (default: the checkpoint's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find the cost_weight at which a policy of every trade-off meets a cost or traffic target on
    the validation split, and print it, ready for ROUTER_COST_WEIGHT."""
    from dataclasses import asdict

    from training.calibrate import calibrate as run_calibration
    from training.checkpoint import load_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits

    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, not {split!r}")
    share = None
    if target_share is not None:
        agent, sep, value = target_share.rpartition("=")
        try:
            share = (agent, float(value)) if sep and agent else None
        except ValueError:
            share = None
        if share is None:
            raise UserError(f"--target-share must be AGENT=P with P a fraction, not {target_share!r}")
    policy = load_checkpoint(checkpoint)
    splits = load_splits(checkpoint_config(policy.meta, config, None))
    result = run_calibration(policy, splits.splits[split], splits.embeddings(split), target_cost_usd_per_1k, share)
    if as_json:
        typer.echo(json.dumps(asdict(result) | {"split": split, "version": policy.version}))
        return
    typer.echo(f"target: {result.target} on the {split} split ({result.prompts} prompts)")
    typer.echo(f"cost_weight {result.cost_weight:.6g}: quality {result.quality:.4f}, "
               f"{result.cost_usd_per_1k:.4f} USD per 1k requests; shares "
               + ", ".join(f"{a} {p:.3f}" for a, p in result.share.items()))
    typer.echo(f"ROUTER_COST_WEIGHT={result.cost_weight:.6g}")


@app.command()
def serve(
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: ROUTER_CHECKPOINT).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for the experience log (default: SQLite).")] = None,
    train_if_missing: Annotated[bool, typer.Option(help="Train (--config) first if no checkpoint exists.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Serve the policy over HTTP (FastAPI under uvicorn).

    Options override the ROUTER_* environment variables (docs/serving.md lists them).
    """
    import uvicorn

    from training.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    for name, value in (("CHECKPOINT", checkpoint), ("HOST", host), ("PORT", port), ("WORKERS", workers),
                        ("REDIS_URL", redis_url)):
        if value is not None:
            os.environ[f"ROUTER_{name}"] = str(value)
    from router.settings import Settings

    settings = _settings(Settings)
    try:
        resolve_checkpoint(settings.checkpoint)
    except CheckpointError:
        if not train_if_missing:
            raise
        from training.run import run_training

        cfg = _config(config, overrides)
        typer.echo(f"no checkpoint at {settings.checkpoint}: training one with {config or DEFAULT_CONFIG}", err=True)
        os.environ["ROUTER_CHECKPOINT"] = str(run_training(cfg))
        settings = _settings(Settings)
    load_checkpoint(settings.checkpoint)  # refuse a corrupt one before binding the port
    uvicorn.run("router.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level, access_log=False)


def _settings(cls):
    from pydantic import ValidationError

    from router.startup import describe_settings_error

    try:
        return cls()
    except ValidationError as exc:
        raise UserError(describe_settings_error(exc)) from None


@app.command()
def retrain(
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint root the servers serve from (default: ROUTER_CHECKPOINT).")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis of the experience stream and the published version (default: ROUTER_REDIS_URL; "
             "unset: the SQLite store).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Redis key prefix (default: ROUTER_REDIS_PREFIX).")] = None,
    sqlite_path: Annotated[Path | None, typer.Option(
        help="SQLite experience store without Redis (default: ROUTER_SQLITE_PATH).")] = None,
    margin: Annotated[float | None, typer.Option(
        help="Publish unless the candidate's held-out reward is lower than the serving one's by more.")] = None,
    sim_iterations: Annotated[int | None, typer.Option(
        help="MAPPO iterations on simulated PromptEnv rollouts mixed in after the logged update.")] = None,
    publish: Annotated[bool, typer.Option(help="Publish a candidate that passes the gate.")] = True,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Any RetrainConfig field, e.g. update_epochs=20, eval_split=test (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    every: Annotated[str | None, typer.Option(
        help="Run round after round, one every this long (90s, 10m, 1h); Ctrl-C stops.")] = None,
    every_records: Annotated[int | None, typer.Option(
        help="Run round after round, each once this many new records are logged (checked every --every, "
             "default 5s).", min=1)] = None,
    rounds: Annotated[int, typer.Option(help="With --every: stop after this many rounds (0: never).", min=0)] = 0,
    metrics_file: Annotated[Path | None, typer.Option(
        help="With --every: append each round's figures here (default: <checkpoint>/retrain_rounds.jsonl).")] = None,
) -> None:
    """Retrain the serving policy on logged feedback; publish the candidate if it passes the gate.

    Reads the experience records after the watermark of the checkpoints (Redis consumer group, or
    the SQLite store), runs PPO warm-started from the serving policy with the logged propensities
    as the old policy, compares candidate and serving policy on the held-out split, writes the
    candidate (with its watermark) and publishes it: every server replica following Redis
    hot-swaps to it. Records are acknowledged only after the checkpoint is durable.
    """
    import yaml
    from pydantic import ValidationError

    from router.settings import Settings
    from training.retrain import RetrainConfig, run_retrain

    settings = _settings(Settings)
    fields: dict = {
        "checkpoint_root": checkpoint or settings.checkpoint,
        "redis_url": redis_url if redis_url is not None else settings.redis_url,
        "redis_prefix": prefix or settings.redis_prefix,
        "sqlite_path": sqlite_path or settings.sqlite_path,
        "publish": publish,
    }
    if margin is not None:
        fields["margin"] = margin
    if sim_iterations is not None:
        fields["sim_iterations"] = sim_iterations
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value, e.g. update_epochs=20")
        fields[key.strip()] = yaml.safe_load(raw)
    try:
        cfg = RetrainConfig.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"retrain: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    if every_records is not None:
        cfg = cfg.model_copy(update={"min_records": every_records})
        every = every or "5s"
    if every is not None:
        from training.retrain.rounds import parse_interval, run_rounds

        interval = parse_interval(every)
        path = metrics_file or Path(cfg.checkpoint_root) / "retrain_rounds.jsonl"

        def show(figures: dict) -> None:
            typer.echo(json.dumps(figures, default=str) if as_json else
                       f"round {figures['round']}: {figures['status']}"
                       + (f" {figures.get('version')}" if figures.get("version") else "")
                       + (f" ({figures['reason']})" if figures.get("reason") else "")
                       + (f" {figures['error']}" if figures.get("error") else ""))

        try:
            run_rounds(cfg, interval, rounds, path, on_round=show, count_too_few=every_records is None)
        except KeyboardInterrupt:
            typer.echo("stopped")
        return
    result = run_retrain(cfg)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo(f"serving {result.serving_version}: {result.records} new records"
               + (f" ({result.used} used in {result.sessions} sessions, skipped {result.skipped})"
                  if result.records else "")
               + (f"; {result.stale_acked} already trained on, acknowledged" if result.stale_acked else ""))
    if result.recovered:
        typer.echo(f"published {result.recovered}, left unpublished by an earlier run")
    if result.status == "too_few":
        typer.echo(f"nothing trained (fewer than min_records={cfg.min_records} new records)")
        return
    gate, static = result.gate, result.gate["static"]
    if gate["logged"] is not None:
        logged = gate["logged"]
        typer.echo(f"held-out logged decisions: {logged['decisions']}; DR value serving "
                   f"{logged['serving']['dr']:.4f}, candidate {logged['candidate']['dr']:.4f}; "
                   f"effective samples {logged['serving']['ess']:.0f} and {logged['candidate']['ess']:.0f}")
    if static is not None:
        typer.echo(f"static {static['split']} split ({static['prompts']} prompts) reward: serving "
                   f"{static['serving']['reward']:.4f}, candidate {static['candidate']['reward']:.4f} "
                   f"(margin {static['margin']})")
    typer.echo(f"gate: {'passed' if gate['passed'] else 'failed'}: {gate['reason']}")
    typer.echo(f"{result.status}: {result.version} at {result.checkpoint} (watermark {result.watermark})")


@app.command()
def embed(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Embed every prompt of the configured dataset into the on-disk cache."""
    from training.data import load_splits

    cfg = _config(config, overrides)
    splits = load_splits(cfg)
    vecs = splits.embedder.encode(splits.dataset.prompts)
    typer.echo(f"{vecs.shape[0]} prompts x {vecs.shape[1]} dims cached in {cfg.embed.cache_dir} "
               f"({splits.embedder.encode_calls} model batches run)")


@data_app.command("convert")
def data_convert(
    layout: Annotated[str, typer.Argument(help="Upstream layout: llmrouter-dc or routellm-evals.")],
    src: Annotated[Path, typer.Option(help="Upstream data directory.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
) -> None:
    """Convert an upstream routing dataset into prompts.jsonl.gz + agents.json."""
    from env.convert import CONVERTERS

    if layout not in CONVERTERS:
        raise UserError(f"unknown layout {layout!r}; known: {', '.join(CONVERTERS)}")
    counts = CONVERTERS[layout](src, out)
    typer.echo(f"{counts['prompts']} prompts x {counts['agents']} agents written to {out}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data, checkpoints and logs.")] = Path(
        "var/demo"),
    requests: Annotated[int, typer.Option(help="Questions sent through the proxy.", min=10)] = 80,
    router_port: Annotated[int, typer.Option(help="Port of the router (proxy).", min=1, max=65535)] = 8765,
    agents_port: Annotated[int, typer.Option(help="Port of the local agents.", min=1, max=65535)] = 9765,
    seed: Annotated[int, typer.Option(help="Seed of the prompts' choice.")] = 0,
) -> None:
    """Run the whole loop locally: agents up, proxy up, the openai client asks, a checker posts quality,
    retrain, hot swap; prints the share of arithmetic routed to the calculator before and after."""
    from agents.demo import DemoConfig, run_demo

    figures = run_demo(DemoConfig(workdir=workdir, requests=requests,
                                  router_port=router_port, agents_port=agents_port, seed=seed), say=typer.echo)
    typer.echo(json.dumps(figures))


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="The key's name, shown in metrics and logs (letters, digits, _.-).")],
    budget_usd_per_day: Annotated[float | None, typer.Option(
        help="USD the key may spend per UTC day (unset: no limit).", min=0.0)] = None,
) -> None:
    """Make a client key: prints the key (give it to the client; it is not kept) and its entry for
    ROUTER_API_KEYS (only the key's SHA-256)."""
    from pydantic import ValidationError

    from router.proxy.keys import hash_key, new_key
    from router.settings import ClientKey

    key = new_key()
    try:
        entry = ClientKey(name=name, sha256=hash_key(key), budget_usd_per_day=budget_usd_per_day)
    except ValidationError as exc:
        raise UserError(f"keys new: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    typer.echo(f"key: {key}")
    typer.echo(f"ROUTER_API_KEYS entry: {json.dumps(entry.model_dump(exclude_none=True))}")


def main() -> None:
    """Console-script entry point: run the app, turning a UserError into one line on stderr."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
