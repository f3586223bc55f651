"""Shared check: an embedder's ``encode`` may run in several threads at once (the server's
``ROUTER_ENCODE_THREADS``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Prompts of mixed length, down to empty and up past the model's 256 tokens.
TEXTS = [f"Prompt {i}: " + "route the queue of this request " * (i % 7) * (1 + 10 * (i % 5 == 4)) for i in range(48)]


def assert_encodes_alike_in_threads(fresh, reference, threads: int = 4) -> None:
    """``fresh`` (an embedder whose model is not loaded yet, so loading races too) encodes ``TEXTS`` one
    by one from ``threads`` threads at once; each vector equals ``reference.encode([text])``."""
    with ThreadPoolExecutor(threads) as pool:
        vectors = list(pool.map(lambda text: fresh.encode([text])[0], TEXTS))
    for text, vector in zip(TEXTS, vectors, strict=True):
        expected = reference.encode([text])[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5, rtol=0)
