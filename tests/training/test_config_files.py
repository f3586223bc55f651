"""Config files: ``extends:`` starts a file from another, and the outcome actor's requirements
are refused with one line naming the field."""

from __future__ import annotations

import pytest

from contract.errors import UserError
from tests.harness import ROOT
from training.config import load_config


def test_the_tradeoffs_configs_extend_the_dataset_configs():
    for name, base in (("tradeoffs", "default"), ("routellm-tradeoffs", "routellm")):
        cfg, parent = load_config(ROOT / f"configs/{name}.yaml"), load_config(ROOT / f"configs/{base}.yaml")
        assert cfg.network.actor == "outcome" and cfg.env.cost_weight_range == (1.0, 1e6)
        assert cfg.data == parent.data and cfg.ppo == parent.ppo and cfg.network.hidden == parent.network.hidden
        assert cfg.checkpoint_dir != parent.checkpoint_dir


def test_extends_merges_sections_and_refuses_cycles_and_missing_files(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nenv:\n  cost_weight: 5.0\n  num_worlds: 8\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nenv:\n  num_worlds: 16\n")
    cfg = load_config(tmp_path / "child.yaml", ["env.episode_len=4"])
    assert (cfg.seed, cfg.env.cost_weight, cfg.env.num_worlds, cfg.env.episode_len) == (3, 5.0, 16, 4)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(UserError, match=r"nowhere\.yaml: config file not found"):
        load_config(tmp_path / "lost.yaml")


@pytest.mark.parametrize(("overrides", "words"), [
    (["network.actor=outcome"], "set env.cost_weight_range"),
    (["network.actor=outcome", "env.cost_weight_range=[1,100]", "env.prompt_features=false"], "prompt_features"),
    (["network.actor=ppo"], "network.actor"),
])
def test_outcome_actor_requirements_are_one_line_errors(overrides, words):
    with pytest.raises(UserError, match=words) as err:
        load_config(ROOT / "configs/default.yaml", overrides)
    assert "\n" not in str(err.value)
