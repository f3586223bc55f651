"""``policy.json``: the metadata of a checkpoint, typed, versioned, validated on load.

Format ``agent-router/policy/v2`` (:data:`FORMAT`). Files of format v1 load through
:func:`migrate_v1`: their ``obs_layout`` gains ``embed_dim`` and ``num_agents`` (derived from
``obs_dim``) and a ``load_clip`` of 4.0 when it had none (``EnvConfig``'s default, which trained
them); a missing or unusable ``capacities`` becomes all-unbounded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.observation import ObsLayout, capacity_or_none

FORMAT = "agent-router/policy/v2"
FORMAT_V1 = "agent-router/policy/v1"
#: ``load_clip`` of v1 files that did not record one (``EnvConfig.load_clip``'s default then)
V1_LOAD_CLIP = 4.0


class ServingEncoderMeta(BaseModel):
    """The encoder chosen at training time to serve the policy by default
    (``training.serving_encoder``): the fastest on the training machine of those whose vectors keep
    at least ``min_agreement`` of the policy's greedy decisions on its ``prompts`` validation prompts."""

    model_config = ConfigDict(extra="forbid")

    encoder: Literal["torch", "onnx-int8", "onnx-fp32"]
    min_agreement: float = Field(ge=0.0, le=1.0)
    prompts: int = Field(ge=1)
    #: each encoder tried -> the share of the decisions its vectors kept (torch: 1)
    agreement: dict[str, float]
    #: each encoder that kept enough -> ms to encode one prompt, one at a time, on the training machine
    ms_per_prompt: dict[str, float]


class EmbeddingMeta(BaseModel):
    """The sentence embedding model the policy was trained on, and its width."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    dim: int = Field(ge=1)
    #: the vectors it was trained on: ``transformer`` (the model itself: torch or an ONNX export) or
    #: ``static`` (static embeddings distilled from it, ``env.static_embedder``); a server refuses the other
    encoder: Literal["transformer", "static"] = "transformer"
    #: static vectors only: the distillation they came from (``env.static_embedder.DISTILLATIONS``),
    #: which a server distils to serve it; None on static vectors: 1, the first (a policy saved before
    #: the version was recorded)
    static_version: int | None = Field(default=None, ge=1)
    #: the encoder a server uses when ``ROUTER_ENCODER`` is unset (None: torch, or static for static vectors)
    serving: ServingEncoderMeta | None = None

    @property
    def distillation(self) -> int | None:
        """The static distillation of a policy on static vectors (1 where none is recorded); None on
        the transformer's."""
        return (self.static_version or 1) if self.encoder == "static" else None


#: Default temperature of an outcome actor's Boltzmann policy (quality units per logit).
OUTCOME_TEMPERATURE = 0.05


class NetworkMeta(BaseModel):
    """Architecture of the actor and critic (``training.config.NetworkConfig``)."""

    model_config = ConfigDict(extra="forbid")

    hidden: tuple[int, ...] = Field(min_length=1)
    share_params: bool = True
    centralised_critic: bool = True
    #: the policy carries a reward critic, every agent's estimated reward (``reward.*`` tensors,
    #: :class:`policy.networks.RewardCritic`); the learner from logged feedback needs it
    reward_critic: bool = False
    #: ``mlp``: the router network :class:`policy.networks.Actor` (trained by MAPPO); ``outcome``:
    #: :class:`policy.outcome.OutcomeActor`, routing by every agent's predicted quality and cost at
    #: the request's cost weight (one checkpoint for every trade-off)
    actor: Literal["mlp", "outcome"] = "mlp"
    #: the outcome actor's ensemble size and Boltzmann temperature (quality units)
    outcome_members: int = Field(default=3, ge=1)
    #: the outcome actor's critic also has a kNN member (:class:`policy.outcome.OutcomeCritic`)
    outcome_neighbors: bool = False
    temperature: float = Field(default=OUTCOME_TEMPERATURE, gt=0.0)


class ExplorationMeta(BaseModel):
    """How ``explore: true`` samples: inverse gap weighting over the reward critic's estimates
    (:mod:`policy.exploration`), with ``gamma`` fixed by the round that made the policy and gaps
    measured to each agent's ``estimate + optimism · width`` (0: to the estimate); the ``young``
    agents (added at run time, with too few records yet to be judged) are tried as if level with
    the leader; ``added`` lists every agent added at run time (``RetrainConfig.shared_slope``
    ``auto`` reads it)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["igw"] = "igw"
    gamma: float = Field(ge=0.0)
    gamma_scale: float = Field(ge=0.0)
    records: int = Field(ge=0)
    optimism: float = Field(default=0.0, ge=0.0)
    young: list[str] = Field(default_factory=list)
    added: list[str] = Field(default_factory=list)


class Watermark(BaseModel):
    """The last experience-log entry a checkpoint was trained on."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["redis", "sqlite"]
    name: str
    id: str


class DataMeta(BaseModel):
    """Where the training data came from."""

    model_config = ConfigDict(extra="allow")

    fingerprint: str | None = None
    source: str | None = None
    prompts: int | None = None
    watermark: Watermark | None = None


class PolicyMeta(BaseModel):
    """Everything ``policy.json`` holds.

    Attributes:
        format: :data:`FORMAT`.
        version: the version name (also the directory's name).
        created_at: ISO 8601 UTC time of writing.
        agents: ``[K]`` agent names in action order.
        agent_specs: the dataset's agent records (``name``, ``description``, prices, ``capacity``).
        capacities: ``[K]`` requests per env step each agent serves (None: unbounded).
        embedding: the embedding model.
        obs_layout: :class:`~contract.observation.ObsLayout`.
        network: :class:`NetworkMeta`.
        training: the whole training config it was trained with (``TrainConfig`` as JSON).
        eval: evaluation figures.
        data: :class:`DataMeta`, including the experience watermark.
        value_norm: the value normaliser's moments.
        exploration: :class:`ExplorationMeta` (None: ``explore`` flattens and floors the policy's
            own distribution, ``router.service.exploration_distribution``).
        history_since: agent -> ISO 8601 time: the reward critic learns of the agent only from
            decisions made at or after it (set when a round found that the agent's feedback had
            moved away from its history, :mod:`training.retrain.change`).
        retired: agents taken out of service (``DELETE /admin/agents/{name}``): they keep their
            index, so their logged records stay readable, and are masked wherever it routes.
        retrain: what the retrain run that made it did (None for a trained policy).
        runtime: torch and Python versions.
        weights_sha256: hex SHA-256 of ``policy.safetensors``.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["agent-router/policy/v2"] = FORMAT
    version: str = Field(min_length=1)
    created_at: str
    agents: list[str] = Field(min_length=1)
    agent_specs: list[dict[str, Any]] = Field(default_factory=list)
    capacities: list[int | None]
    embedding: EmbeddingMeta
    obs_layout: ObsLayout
    network: NetworkMeta
    training: dict[str, Any] | None = None
    eval: dict[str, Any] = Field(default_factory=dict)
    data: DataMeta = Field(default_factory=DataMeta)
    value_norm: dict[str, Any] | None = None
    exploration: ExplorationMeta | None = None
    history_since: dict[str, str] = Field(default_factory=dict)
    retired: list[str] = Field(default_factory=list)
    retrain: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    weights_sha256: str = Field(min_length=64, max_length=64)

    @field_validator("capacities", mode="before")
    @classmethod
    def _capacities(cls, value: Any) -> Any:
        return [capacity_or_none(c) for c in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> PolicyMeta:
        k = len(self.agents)
        if len(set(self.agents)) != k:
            raise ValueError("agents has duplicate names")
        if len(self.capacities) != k:
            raise ValueError(f"{len(self.capacities)} capacities for {k} agents")
        if self.obs_layout.num_agents != k:
            raise ValueError(f"obs_layout.num_agents is {self.obs_layout.num_agents}, agents has {k}")
        if self.obs_layout.embed_dim != self.embedding.dim:
            raise ValueError(f"obs_layout.embed_dim {self.obs_layout.embed_dim} != embedding.dim {self.embedding.dim}")
        if unknown := sorted(set(self.retired) - set(self.agents)):
            raise ValueError(f"retired agents {unknown} are not agents of the policy")
        if len(set(self.retired)) >= k:
            raise ValueError("every agent is retired")
        if self.exploration is not None and not self.network.reward_critic:
            raise ValueError("exploration needs network.reward_critic")
        return self

    @property
    def watermark(self) -> Watermark | None:
        return self.data.watermark

    def content(self) -> dict[str, Any]:
        """What a derived checkpoint copies: everything but ``format``, ``version``,
        ``created_at`` and ``weights_sha256`` (JSON-ready)."""
        return self.model_dump(mode="json", exclude={"format", "version", "created_at", "weights_sha256"})


def migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A v1 ``policy.json`` object as v2 (see the module docstring); other keys are kept.

    Raises:
        ValueError: the v1 object lacks what v2 derives from (``agents``, ``obs_layout.obs_dim``).
    """
    out = dict(raw)
    try:
        agents = list(raw["agents"])
        old = dict(raw["obs_layout"])
        num_routers = int(old.get("num_routers", 1))
        include_id = bool(old.get("include_agent_id", False))
        embed_dim = int(old["obs_dim"]) - len(agents) - (num_routers if include_id else 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"v1 metadata without agents or obs_layout.obs_dim ({exc})") from None
    out["obs_layout"] = {
        "embed_dim": embed_dim,
        "num_agents": len(agents),
        "num_routers": num_routers,
        "include_agent_id": include_id,
        "load_clip": float(old.get("load_clip") or V1_LOAD_CLIP),
    }
    capacities = raw.get("capacities")
    try:
        ok = isinstance(capacities, list) and len(capacities) == len(agents)
        out["capacities"] = [capacity_or_none(c) for c in capacities] if ok else [None] * len(agents)
    except ValueError:
        out["capacities"] = [None] * len(agents)
    out["format"] = FORMAT
    return out


def parse_policy_meta(raw: Any) -> PolicyMeta:
    """A ``policy.json`` object of any known format as :class:`PolicyMeta`.

    Raises:
        ValueError: an unknown format, or content that does not validate (pydantic's
            ``ValidationError`` is a ``ValueError``).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    fmt = raw.get("format")
    if fmt == FORMAT_V1:
        raw = migrate_v1(raw)
    elif fmt != FORMAT:
        raise ValueError(f"format {fmt!r}, expected {FORMAT!r} (or {FORMAT_V1!r})")
    return PolicyMeta.model_validate(raw)
