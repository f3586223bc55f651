"""The contract the trainer, the server and the retrain job share, to the last float.

- :mod:`contract.observation`: the observation's layout and the one function that builds it;
- :mod:`contract.policy_meta`: ``policy.json`` (:class:`~contract.policy_meta.PolicyMeta`);
- :mod:`contract.experience`: the experience record the server logs and the retrain job reads.

It imports none of ``env``, ``training`` or ``router``; they all import it.
"""
