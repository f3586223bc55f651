"""A round's first step: bring the serving policy to the agent set the operators asked for.

The changes recorded by ``POST /admin/agents`` and ``DELETE /admin/agents/{name}``
(:mod:`experience.agent_changes`) that the serving policy lacks are applied to it
(:func:`policy.agent_set.apply_changes`: new agents appended, what was learned about the others
kept) and saved as a version of its own (not published: the round that follows starts from it and
publishes its candidate). A round runs on such a change even without new records.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contract.errors import UserError
from experience.agent_changes import AgentChanges
from policy.agent_set import AgentSetError, apply_changes
from policy.artefact import Policy
from policy.checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def bring_to_agent_set(root: Path, serving: Policy, changes: AgentChanges | None) -> tuple[Policy, list[str]]:
    """``(policy, applied)``: ``serving`` itself and ``[]`` when it has every recorded change, else
    the changed policy, saved under ``root`` and loaded back, and the changes (``"+name"``,
    ``"-name"``).

    Raises:
        UserError: a recorded change that cannot be applied (e.g. a new agent without the price
            this policy needs), or the record cannot be read.
    """
    if changes is None:
        return serving, []
    recorded = changes.read()
    if serving.reward_critic is None:  # the server refuses such changes; one recorded for another policy waits
        if recorded.added or recorded.retired:
            logger.warning("agent changes recorded, but %s has no reward critic to learn them: not applied",
                           serving.version)
        return serving, []
    try:
        changed = apply_changes(serving, recorded.added, recorded.retired)
    except AgentSetError as exc:
        raise UserError(f"cannot apply the recorded agent changes to {serving.version}: {exc}") from None
    if changed is None:
        return serving, []
    actor, critic, reward_critic, content, applied = changed
    content["retrain"] = {"parent_version": serving.version, "agent_changes": applied}
    content["eval"] = {}
    path = save_checkpoint(root, actor, critic, content, reward_critic)
    logger.info("agents %s: %s saved as %s", " ".join(applied), serving.version, path.name)
    return load_checkpoint(path), applied
