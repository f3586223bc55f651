"""Adding and retiring agents on a policy, without training from scratch.

The action order only grows: a new agent is appended (action ``K``), a retired agent keeps its
index and is masked wherever the policy routes (``policy.json`` ``retired``). So every record
logged before a change still names its agent by the same index, and its per-agent lists (load,
mask) are a prefix of the new ones (:mod:`training.retrain.trajectories` pads them).

:func:`add_agent` grows every network so that it computes what it computed before for the agents
it knew, with the new agent's columns and outputs set apart:

* the observation gains the agent's columns (its load, and with prices its expected cost and cost
  penalty); the first layer of the actor and of the critic reads them with zero weights;
* the actor's output gains a row of zero weights and a bias :data:`NEW_AGENT_LOGIT_GAP` below the
  lowest of the others: before any feedback the greedy choice stays (nearly) where it was, and
  exploration, not the actor, tries the new agent;
* the reward critic gains a model for it at its ``prior_quality``, else at the best of the other
  agents' intercepts (clipped to [0, 1]) until the round that follows the change refits it, with
  the prior's covariance: its posterior is wide until its feedback arrives. Without a
  ``prior_quality`` that round and every later one shrink it towards the best mean logged reward of
  the others (:func:`training.retrain.bandit_round.critic_priors`): optimistic initialisation
  (Sutton and Barto 2018, sec. 2.6), as good as the leader until its own feedback outweighs that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contract.observation import ObsLayout
from contract.policy_meta import PolicyMeta
from env.dataset import AgentSpec
from policy.artefact import Policy
from policy.networks import NetworkShape, PreferenceRewardCritic, RouterLinear, build_networks, build_reward_critic

#: how far (in logits) below the least favoured agent's bias a new agent's starts
NEW_AGENT_LOGIT_GAP = 1.0


class AgentSetError(ValueError):
    """A change of the agent set that cannot be made (a duplicate name, an unknown agent, a price
    missing where the policy needs one)."""


class AgentExists(AgentSetError):
    """A new agent's name is an agent of the policy already (retired or not)."""


def check_new_agent(policy: Policy, spec: AgentSpec) -> ObsLayout:
    """The layout ``policy`` would have with ``spec`` appended.

    Raises:
        AgentExists: ``spec.name`` is an agent of the policy already (retired or not).
        AgentSetError: the policy weighs prices and ``spec`` has none.
    """
    if spec.name in policy.agents:
        raise AgentExists(f"agent {spec.name!r} exists already" +
                          (" (retired)" if spec.name in policy.meta.retired else ""))
    return grown_layout(policy.layout, spec)


def grown_layout(layout: ObsLayout, spec: AgentSpec) -> ObsLayout:
    """``layout`` with one more agent (its price appended when the layout has prices).

    Raises:
        AgentSetError: the layout has prices and ``spec`` has none.
    """
    update: dict[str, Any] = {"num_agents": layout.num_agents + 1, "obs_dim": None, "parts": None}
    if layout.agent_prices is not None:
        if spec.price_per_1m_tokens is None and spec.cost_per_call_usd is None:
            raise AgentSetError(f"agent {spec.name!r} needs a price: this policy weighs every agent's cost")
        update["agent_prices"] = (*layout.agent_prices, spec.price)
    return ObsLayout.model_validate(layout.model_dump() | update)


def column_map(old: ObsLayout, new: ObsLayout) -> list[int]:
    """``[D_old]``: the new column of each old observation column (parts keep their order; a
    per-agent part keeps agent ``k`` at offset ``k``)."""
    out: list[int] = []
    for part in old.widths():
        start_old, stop_old = old.cols(part).start, old.cols(part).stop
        start_new = new.cols(part).start
        out.extend(start_new + i for i in range(stop_old - start_old))
    return out


def _input_map(old_columns: list[int] | None, new_columns: list[int] | None, obs_map: list[int],
               old_dim: int) -> list[int]:
    """The new input index of each old input of a network reading ``old_columns`` (None: all)."""
    old_cols = old_columns if old_columns is not None else list(range(old_dim))
    if new_columns is None:
        return [obs_map[c] for c in old_cols]
    position = {c: i for i, c in enumerate(new_columns)}
    return [position[obs_map[c]] for c in old_cols]


@torch.no_grad()
def _copy_layer(old: nn.Module, new: nn.Module, inputs: list[int] | None, outputs: int | None) -> None:
    """Copy ``old``'s weights into ``new`` (zero elsewhere): old input ``i`` to ``inputs[i]`` (None:
    same index); the first ``outputs`` outputs (None: all)."""
    if isinstance(old, nn.Linear) and isinstance(new, nn.Linear):
        rows = slice(None) if outputs is None else slice(0, outputs)
        new.weight.zero_()
        cols = list(range(old.weight.shape[1])) if inputs is None else inputs
        new.weight[rows, cols] = old.weight
        new.bias[rows] = old.bias
    elif isinstance(old, RouterLinear) and isinstance(new, RouterLinear):
        outs = slice(None) if outputs is None else slice(0, outputs)
        new.weight.zero_()
        rows = list(range(old.weight.shape[1])) if inputs is None else inputs
        new.weight[:, rows, outs] = old.weight
        new.bias[:, outs] = old.bias
    else:
        raise TypeError(f"cannot copy {type(old).__name__} into {type(new).__name__}")


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.net.net if isinstance(m, nn.Linear | RouterLinear)]


def add_agent(policy: Policy, spec: AgentSpec) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(actor, critic, reward_critic, meta)`` of ``policy`` with ``spec`` appended as action ``K``
    (see the module docstring); ``meta`` is ready for :func:`policy.checkpoint.save_checkpoint`.

    Raises:
        AgentExists, AgentSetError: as :func:`check_new_agent`.
    """
    old, meta = policy.layout, policy.meta
    new = check_new_agent(policy, spec)
    obs_map, k = column_map(old, new), old.num_agents
    actor, critic = build_networks(meta.network, NetworkShape.of_layout(new))
    old_layers, new_layers = _layers(policy.actor), _layers(actor)
    for i, (a, b) in enumerate(zip(old_layers, new_layers, strict=True)):
        inputs = _input_map(old.actor_columns(), new.actor_columns(), obs_map, old.dim) if i == 0 else None
        _copy_layer(a, b, inputs, k if i == len(old_layers) - 1 else None)
    with torch.no_grad():
        last = new_layers[-1]
        bias = last.bias[..., :k]
        last.bias[..., k] = bias.min(dim=-1).values - NEW_AGENT_LOGIT_GAP
        if getattr(policy.actor, "penalty", None) is not None:
            actor.log_penalty_scale.copy_(policy.actor.log_penalty_scale)
    state_map = [r * new.dim + obs_map[c] for r in range(old.num_routers) for c in range(old.dim)]
    if policy.critic.centralised and policy.critic.share_params:  # the router one-hot follows the state
        state_map += [new.state_dim + r for r in range(old.num_routers)]
    for i, (a, b) in enumerate(zip(_layers(policy.critic), _layers(critic), strict=True)):
        inputs = (state_map if policy.critic.centralised else obs_map) if i == 0 else None
        _copy_layer(a, b, inputs, None)
    reward_critic = None
    if policy.reward_critic is not None:
        old_rc = policy.reward_critic
        reward_critic = build_reward_critic(new)
        with torch.no_grad():
            reward_critic.weight[:k] = old_rc.weight
            reward_critic.bias[:k] = old_rc.bias
            # until the next fit; the round's own prior for it is the leader's logged level (critic_priors)
            start = spec.prior_quality if spec.prior_quality is not None else float(old_rc.bias.max())
            reward_critic.bias[k] = min(1.0, max(0.0, start))
            reward_critic.covariance[:k] = old_rc.covariance
            if isinstance(old_rc, PreferenceRewardCritic):  # the new agent's cost starts at its price
                reward_critic.cost_coef[:k] = old_rc.cost_coef
                reward_critic.cost_bias[:k] = old_rc.cost_bias
            # the widest posterior of the others (an agent never chosen has the prior's); the next
            # round's fit sets the new agent's to the prior's until it has feedback
            widest = int(torch.diagonal(old_rc.covariance, dim1=1, dim2=2).sum(-1).argmax())
            reward_critic.covariance[k] = old_rc.covariance[widest]
    content = meta.content()
    content["agents"] = [*meta.agents, spec.name]
    content["agent_specs"] = [*meta.agent_specs, spec.model_dump()]
    content["capacities"] = [*meta.capacities, spec.capacity]
    content["obs_layout"] = new.model_dump(mode="json")
    exploration = content.get("exploration")
    if exploration is not None:  # explored as level with the leader until the critic has enough of its records
        exploration["young"] = [*exploration.get("young", []), spec.name]
        exploration["added"] = [*exploration.get("added", []), spec.name]
    return actor, critic, reward_critic, content


def retire_agent(meta: PolicyMeta, name: str) -> dict[str, Any]:
    """The content of ``meta`` with ``name`` retired (masked wherever the policy routes; its index
    and its logged records stay).

    Raises:
        AgentSetError: ``name`` is not an agent of the policy, is retired already, or is the last
            agent not retired.
    """
    if name not in meta.agents:
        raise AgentSetError(f"no agent {name!r} in this policy")
    if name in meta.retired:
        raise AgentSetError(f"agent {name!r} is retired already")
    if len(meta.agents) - len(meta.retired) <= 1:
        raise AgentSetError(f"agent {name!r} is the last one serving: add another before retiring it")
    content = meta.content()
    content["retired"] = [*meta.retired, name]
    return content


def apply_changes(policy: Policy, added: list[dict[str, Any]],
                  retired: list[str]) -> tuple[Any, Any, Any, dict[str, Any], list[str]] | None:
    """``policy`` with every change it lacks: the ``added`` agents (agents-file entries, in order)
    it does not have appended, then the ``retired`` names it has and has not retired retired.

    Returns:
        ``(actor, critic, reward_critic, content, applied)`` (``applied``: ``"+name"`` and
        ``"-name"`` per change), or None when there is nothing to change.

    Raises:
        AgentSetError: an added entry that is not a valid agent, or a change that cannot be made.
    """
    actor, critic, reward_critic = policy.actor, policy.critic, policy.reward_critic
    content, applied = policy.meta.content(), []
    current = policy
    for raw in added:
        if raw.get("name") in current.agents:
            continue
        try:
            spec = AgentSpec.model_validate({k: v for k, v in raw.items() if k != "upstream"})  # the proxy's
        except ValueError as exc:
            raise AgentSetError(f"agent {raw.get('name')!r}: {exc}") from None
        actor, critic, reward_critic, content = add_agent(current, spec)
        current = Policy(current.path, _meta(current, content), actor, critic, reward_critic)
        applied.append(f"+{spec.name}")
    for name in retired:
        if name in current.agents and name not in current.meta.retired:
            content = retire_agent(current.meta, name)
            current = Policy(current.path, _meta(current, content), actor, critic, reward_critic)
            applied.append(f"-{name}")
    return (actor, critic, reward_critic, content, applied) if applied else None


def _meta(policy: Policy, content: dict[str, Any]) -> PolicyMeta:
    """``content`` as the in-memory meta of a changed, not yet saved, ``policy``."""
    return PolicyMeta.model_validate(content | {"version": policy.version, "created_at": policy.meta.created_at,
                                                "weights_sha256": policy.meta.weights_sha256})
