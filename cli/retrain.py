"""``agent-router retrain``: the serving policy retrained on logged feedback, once or round after
round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.options import server_settings
from contract.errors import UserError

#: the first word of the line ``retrain --every`` writes to stderr once it is running
READY = "retraining"


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
             "default 5s), or earlier when an agent's new records already do worse than the policy expects.",
        min=1)] = None,
    rounds: Annotated[int, typer.Option(help="With --every: stop after this many rounds (0: never).", min=0)] = 0,
    metrics_file: Annotated[Path | None, typer.Option(
        help="With --every: append each round's figures here (default: <checkpoint>/retrain_rounds.jsonl).")] = None,
) -> None:
    """Retrain the serving policy on logged feedback; publish the candidate if it passes the gate.

    Reads the experience records after the watermark of the checkpoints (Redis consumer group, or
    the SQLite store). A policy with a reward critic (from `agent-router init`) refits its critic
    and its actor on the records logged so far (the newest replay_records; docs/learning.md); a
    policy trained by `agent-router train` runs PPO warm-started from itself, with the logged
    propensities as the old policy. The
    candidate is compared with the serving policy on held-out logged records, written with its
    watermark and published: every server replica following Redis hot-swaps to it. Records are
    acknowledged only after the checkpoint is durable.
    """
    import yaml
    from pydantic import ValidationError

    from training.retrain import RetrainConfig, run_retrain

    settings = server_settings()
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
        cadence = (f"a round once {every_records} new records are logged (checked every {every})"
                   if every_records is not None else f"a round every {every}")
        typer.echo(f"{READY}: {cadence}; Ctrl-C stops", err=True)

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
