import pytest
import torch

from training.ppo import ppo_loss


def _loss(new_lp, adv, **kw):
    n = len(adv)
    z = torch.zeros(n)
    args = dict(new_value=z, old_value=z, returns=z, entropy=z, clip_coef=0.2, ent_coef=0.0, vf_coef=0.5)
    args.update(kw)
    return ppo_loss(torch.tensor(new_lp), torch.zeros(n), torch.tensor(adv), **args)


def test_on_policy_surrogate_is_minus_mean_advantage():
    out = _loss([0.0, 0.0], [1.0, -3.0])
    assert out.policy_loss.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == 0 and out.clipfrac.item() == 0


def test_ratio_is_clipped_in_the_pessimistic_direction():
    up = torch.log(torch.tensor(1.5)).item()
    # positive advantage, ratio 1.5 -> clipped to 1.2
    assert _loss([up], [2.0]).policy_loss.item() == pytest.approx(-2.0 * 1.2)
    # negative advantage, ratio 1.5 -> min(-3, -2.4) = -3: unclipped (pessimistic)
    assert _loss([up], [-2.0]).policy_loss.item() == pytest.approx(2.0 * 1.5)
    assert _loss([up], [2.0]).clipfrac.item() == 1.0


def test_value_loss_entropy_and_total():
    v = torch.tensor([1.0, 2.0])
    ret = torch.tensor([0.0, 0.0])
    out = _loss([0.0, 0.0], [0.0, 0.0], new_value=v, returns=ret, entropy=torch.tensor([0.5, 1.5]), ent_coef=0.1)
    assert out.value_loss.item() == pytest.approx(0.5 * (1 + 4) / 2)
    assert out.entropy.item() == pytest.approx(1.0)
    assert out.loss.item() == pytest.approx(0.0 + 0.5 * 1.25 - 0.1 * 1.0)
    # clipped value loss: the new value may move only clip_coef away from the old one
    clipped = _loss([0.0], [0.0], new_value=torch.tensor([1.0]), old_value=torch.tensor([0.0]),
                    returns=torch.tensor([1.0]), clip_vloss=True)
    assert clipped.value_loss.item() == pytest.approx(0.5 * max(0.0, (0.2 - 1.0) ** 2))
