"""The served artefact, on its own floor: what the trainer writes and the server reads.

- :mod:`policy.networks`: the actor, the critic, the reward critic and their one builder;
- :mod:`policy.artefact`: :class:`~policy.artefact.Policy`, a loaded version;
- :mod:`policy.checkpoint`: a version directory written atomically, read and validated;
- :mod:`policy.exploration`: the sampling distribution of a policy with a reward critic;
- :mod:`policy.versions`: which version every server follows (Redis keys and the one publish).

It imports ``contract`` and ``env`` only; ``training`` and ``router`` import it, never each other.
"""
