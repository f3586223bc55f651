"""Training configuration: pydantic models, loaded from YAML and overridden from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.errors import UserError
from contract.policy_meta import OUTCOME_TEMPERATURE, PolicyMeta
from env.config import EnvConfig


class DataConfig(BaseModel):
    """Where the routing data lives and how it is split.

    Relative paths, here and elsewhere in the config, are relative to the working directory.
    """

    model_config = ConfigDict(extra="forbid")

    prompts: Path = Path("data/llmrouter-dc/prompts.jsonl.gz")
    agents: Path = Path("data/llmrouter-dc/agents.json")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    limit: int | None = Field(default=None, ge=1, description="read only the first N prompts")


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "all-MiniLM-L6-v2"
    encoder: Literal["torch", "static"] = Field(
        default="torch", description="torch: the sentence model; static: static embeddings distilled from it "
        "(env.static_embedder); the policy is served with the same kind (policy.json embedding.encoder)")
    static_dir: Path = Path("var/static")
    static_version: int | None = Field(
        default=None, ge=1, description="static only: the distillation (env.static_embedder.DISTILLATIONS); None: "
        "the newest. A checkpoint's own config gets the one its policy was trained on (policy.json "
        "embedding.static_version)")
    cache_dir: Path = Path("var/embeddings")
    batch_size: int = Field(default=64, ge=1)
    serving_candidates: list[Literal["onnx-int8", "onnx-fp32"]] = Field(
        default=["onnx-int8", "onnx-fp32"], description="encoders tried at the end of training as the policy's "
        "default serving encoder beside torch (training.serving_encoder); [] keeps torch")
    min_agreement: float = Field(default=0.99, ge=0.0, le=1.0, description="share of the policy's validation "
                                 "decisions a serving encoder's vectors must keep")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: tuple[int, ...] = (256, 256)
    share_params: bool = True
    centralised_critic: bool = Field(default=True, description="MAPPO if true, IPPO if false")
    actor: Literal["mlp", "outcome"] = Field(
        default="mlp", description="mlp: the router network trained by MAPPO; outcome: every agent's quality and cost "
        "predicted apart on full-information data, routed at each request's cost_weight (policy.outcome)")
    outcome_members: int = Field(default=3, ge=1, description="ensemble size of the outcome actor's critic (MLPs)")
    outcome_neighbors: bool = Field(
        default=True, description="the outcome actor's critic also has a k-nearest-neighbour member over the "
        "embedding, k chosen by leave-one-out on train (policy.outcome.OutcomeCritic)")
    temperature: float = Field(default=OUTCOME_TEMPERATURE, gt=0,
                               description="the outcome actor's Boltzmann temperature (quality units)")


class PPOConfig(BaseModel):
    """PPO hyper-parameters (Schulman et al. 2017, arXiv 1707.06347; names as in CleanRL)."""

    model_config = ConfigDict(extra="forbid")

    total_steps: int = Field(default=400, ge=1, description="env steps (each steps B worlds)")
    rollout_len: int = Field(default=16, ge=1, description="T of the rollout buffer")
    lr: float = Field(default=3e-4, gt=0, description="the actor's learning rate (and the critic's unless critic_lr)")
    critic_lr: float | None = Field(default=None, gt=0, description="the critic's learning rate; unset: lr")
    anneal_lr: bool = True
    gamma: float = Field(default=0.99, ge=0, le=1)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    update_epochs: int = Field(default=4, ge=1)
    num_minibatches: int = Field(default=4, ge=1)
    clip_coef: float = Field(default=0.2, gt=0)
    clip_vloss: bool = Field(default=False, description="clip the value change to clip_coef (PPO2/CleanRL)")
    norm_value: bool = Field(default=True, description="running value-target normalisation (MAPPO, Yu et al.)")
    target_kl: float | None = Field(default=None, gt=0, description="stop the update when approx_kl > 1.5x this")
    ent_coef: float = Field(default=0.01, ge=0)
    ent_coef_end: float | None = Field(default=None, ge=0, description="anneal ent_coef linearly to this")
    vf_coef: float = Field(default=0.5, ge=0)
    max_grad_norm: float = Field(default=0.5, gt=0)
    norm_adv: bool = True
    pg_estimator: Literal["sampled", "expected"] = Field(
        default="sampled",
        description="sampled: the PPO gradient of the action taken; expected: in expectation over every "
        "action, with each agent's reward from the env (Mean Actor-Critic, Allen et al. 2017, arXiv 1709.00503)",
    )


class TrainConfig(BaseModel):
    """Everything ``agent-router train`` needs."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:1")
    compile: bool = Field(default=False, description="torch.compile the actor's and the critic's forward (the "
                          "first iterations pay the compilation; needs a C++ compiler on the CPU)")
    out_dir: Path = Path("runs/default")
    checkpoint_dir: Path = Path("checkpoints")
    save_every: int = Field(default=0, ge=0, description="iterations between resumable trainer states; 0 = end only")
    eval_every: int = Field(default=10, ge=0, description="iterations between validation evaluations (the greedy "
                            "policy's reward on the val split, in metrics.jsonl as val_*); 0: none")
    keep_best: bool = Field(default=False, description="checkpoint the weights of the best validation evaluation "
                            "instead of the last (needs eval_every)")
    tensorboard: bool = Field(default=True, description="also write the metrics as TensorBoard scalars to "
                              "out_dir/tensorboard")
    data: DataConfig = DataConfig()
    embed: EmbedConfig = EmbedConfig()
    env: EnvConfig = EnvConfig()
    network: NetworkConfig = NetworkConfig()
    ppo: PPOConfig = PPOConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError("device must be auto, cpu or cuda[:i]")
        return v

    @model_validator(mode="after")
    def _outcome_actor(self) -> TrainConfig:
        if self.network.actor == "outcome":
            if not self.env.prompt_features:
                raise ValueError("network.actor outcome needs env.prompt_features (the agents' prices)")
            if self.env.cost_weight_range is None:
                raise ValueError("network.actor outcome serves every cost_weight up to env.cost_weight_range's "
                                 "high: set env.cost_weight_range")
        return self

    def resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {self.device!r} asked for but CUDA is not available")
        return self.device


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _extended(path: Path, tree: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    """``tree`` over the config its ``extends:`` names (a path relative to ``path``'s folder), merged
    section by section; no ``extends``: ``tree``."""
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    base_path = (path.parent / str(parent)).resolve()
    if base_path in seen:
        raise UserError(f"{path}: extends {parent}: a cycle of configs")
    if not base_path.is_file():
        raise UserError(f"{path}: extends {parent}: config file not found")
    return _merge(_extended(base_path, _read_mapping(base_path), (*seen, base_path)), tree)


def _read_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in the file ``path`` (empty: ``{}``).

    Raises:
        UserError: invalid YAML, or not a mapping at the top level.
    """
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return tree


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file and ``key.sub=value`` overrides.

    Override values are parsed as YAML (``ppo.lr=1e-3``, ``network.hidden=[64,64]``). A file may
    start from another: ``extends: default.yaml`` (relative to its folder), whose sections it
    overrides key by key.
    ``base`` (a config as a dict, e.g. a checkpoint's recorded one) is used when ``path`` is None.

    Raises:
        UserError: unreadable file, bad YAML, malformed override, or a value that fails validation
            (one line naming the field).
    """
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        tree = _extended(path, _read_mapping(path), seen=(path.resolve(),))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value, e.g. ppo.lr=1e-3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    try:
        cfg = TrainConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{path or 'config'}: {where}: {err['msg']}") from None
    return cfg


def checkpoint_config(
    meta: PolicyMeta,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    hint: str = "pass --config",
) -> TrainConfig:
    """The config a checkpoint was trained with (``policy.json`` ``training``), or the YAML at
    ``path`` instead, with ``overrides``; its dataset must be readable from here.

    Raises:
        UserError: as :func:`load_config`, or the dataset file is missing (the message ends with
            ``hint``).
    """
    cfg = load_config(path, overrides or [], base=None if path else meta.training)
    if meta.embedding.distillation is not None:  # the static vectors the policy was trained on
        cfg.embed = cfg.embed.model_copy(update={"static_version": meta.embedding.distillation})
    if not Path(cfg.data.prompts).is_file():
        raise UserError(f"{cfg.data.prompts}: dataset of this checkpoint not found; {hint}")
    return cfg
