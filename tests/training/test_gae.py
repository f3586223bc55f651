import pytest
import torch

from training.gae import generalized_advantage_estimate

R = torch.tensor([1.0, 2.0, 3.0])
V = torch.tensor([0.5, 1.0, 1.5])
NV = torch.tensor([1.0, 1.5, 2.0])  # V(s'_t): for a truncated step, the value of its final obs
F = torch.zeros(3, dtype=torch.bool)
AT1 = torch.tensor([False, True, False])


@pytest.mark.parametrize(
    ("gamma", "lam", "done", "terminated", "expected"),
    [
        # deltas: 1 + .9*1 - .5 = 1.4, 2 + .9*1.5 - 1 = 2.35, 3 + .9*2 - 1.5 = 3.3; gamma*lam = .72
        (0.9, 0.8, F, F, [1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3]),
        # truncated at t=1: the bootstrap V(s'_1) stays, the trace is cut
        (0.9, 0.8, AT1, F, [1.4 + 0.72 * 2.35, 2.35, 3.3]),
        # terminated at t=1: no bootstrap (delta_1 = 2 - 1 = 1) and the trace is cut
        (0.9, 0.8, AT1, AT1, [1.4 + 0.72 * 1.0, 1.0, 3.3]),
        # gamma = lambda = 1: Monte Carlo return to the end plus V(s'_2), minus V(s_t)
        (1.0, 1.0, F, F, [1 + 2 + 3 + 2.0 - 0.5, 2 + 3 + 2.0 - 1.0, 3 + 2.0 - 1.5]),
        # lambda = 0: one-step TD errors
        (0.5, 0.0, F, F, [1 + 0.5 - 0.5, 2 + 0.75 - 1.0, 3 + 1.0 - 1.5]),
        # gamma = 0: advantage = reward - value
        (0.0, 0.95, F, F, [0.5, 1.0, 1.5]),
    ],
)
def test_hand_computed(gamma, lam, done, terminated, expected):
    adv, ret = generalized_advantage_estimate(R, V, NV, done, terminated, gamma, lam)
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert ret.tolist() == pytest.approx([a + v for a, v in zip(expected, V.tolist(), strict=True)], abs=1e-6)


def _reference(r, v, nv, done, term, gamma, lam):
    """Per-element Python loops, written from the paper's definition."""
    out = torch.zeros_like(v)
    T = r.shape[0]
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in r.shape[1:]]).reshape(-1, r.ndim - 1):
        i = tuple(idx.tolist())
        acc = 0.0
        for t in reversed(range(T)):
            delta = r[(t, *i)] + gamma * nv[(t, *i)] * (1 - float(term[(t, *i)])) - v[(t, *i)]
            acc = delta + gamma * lam * (1 - float(done[(t, *i)])) * acc
            out[(t, *i)] = acc
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.5), (0.5, 1.0)])
def test_batched_matches_reference(gamma, lam):
    g = torch.Generator().manual_seed(0)
    shape = (12, 3, 2)  # [T, B, N]
    r, v, nv = (torch.randn(shape, generator=g) for _ in range(3))
    term = torch.rand(shape, generator=g) < 0.1
    done = term | (torch.rand(shape, generator=g) < 0.1)
    adv, _ = generalized_advantage_estimate(r, v, nv, done, term, gamma, lam)
    torch.testing.assert_close(adv, _reference(r, v, nv, done, term, gamma, lam))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="reward"):
        generalized_advantage_estimate(R[:2], V, NV, F, F, 0.9, 0.9)
