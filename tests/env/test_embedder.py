import numpy as np

from env.embedder import Embedder
from tests.env.threads import assert_encodes_alike_in_threads


def test_second_run_embeds_nothing(tmp_path):
    texts = ["Route this maths question.", "Write a haiku about queues.", "Route this maths question."]
    first = Embedder(cache_dir=tmp_path)
    a = first.encode(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a[0], a[2])
    assert first.encode_calls == 1

    second = Embedder(cache_dir=tmp_path)  # a new process would see the same files
    b = second.encode(texts)
    assert second.encode_calls == 0
    assert second._model is None, "a full cache hit must not even load the model"
    np.testing.assert_array_equal(a, b)

    # one new text: only it is embedded
    c = second.encode([*texts, "A new prompt."])
    assert second.encode_calls == 1
    np.testing.assert_array_equal(c[:3], a)


def test_cache_is_keyed_by_model(tmp_path):
    Embedder(cache_dir=tmp_path).encode(["hello"])
    other = Embedder(model="sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    other.encode(["hello"])
    assert other.encode_calls == 0, "aliases of the bundled model share one cache key"
    assert Embedder(cache_dir=tmp_path).cache.get_many("some/other-model", [b"x"]) == {}


def test_uncached_embedder_matches_cached(tmp_path):
    texts = ["one", "two"]
    np.testing.assert_allclose(Embedder().encode(texts), Embedder(cache_dir=tmp_path).encode(texts), atol=1e-6)


def test_encode_runs_in_several_threads_at_once():
    assert_encodes_alike_in_threads(Embedder(batch_size=1), Embedder(batch_size=1))
