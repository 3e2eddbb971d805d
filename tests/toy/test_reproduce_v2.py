"""``parauni toy reproduce --world v2``: the v2 job graph (every step with its v2 config) and a smoke run of it."""

from __future__ import annotations

import pytest
import yaml

from parauni.rl.config import load_grpo_config
from parauni.toy.reproduce import reproduce
from parauni.toy.reproduce.v2 import plan_v2
from parauni.train.config import load_config
from parauni.utils.configs import shipped_config


def test_v2_plan_lists_every_step_with_its_v2_config(tmp_path):
    jobs = plan_v2(tmp_path, [0, 1], scale="full")
    names = [j.name for j in jobs]
    assert names[:5] == ["world-vlm", "world-prior", "world-rewards", "world-probe", "world-prior-eval"]
    for i, job in enumerate(jobs):  # every dependency comes earlier
        assert all(a in names[:i] for a in job.after), job.name
    by = {j.name: j for j in jobs}
    for name, config in [("world-vlm", "toy_pretrain_vlm_v2.yaml"), ("world-prior", "toy_pretrain_prior_v2.yaml"),
                         ("world-rewards", "toy_train_rewards_v2.yaml"), ("seed1-all-stage1", "toy_stage1_v2.yaml"),
                         ("seed1-all-stage2", "toy_stage2_v2.yaml"),
                         ("seed1-last-stage1", "toy_stage1_lastlayer_v2.yaml"),
                         ("seed1-last-stage2", "toy_stage2_lastlayer_v2.yaml"),
                         ("seed0-nft", "toy_nft_geneval_v2.yaml"), ("seed0-awm", "toy_awm_geneval_v2.yaml"),
                         ("seed0-grpo", "toy_grpo_geneval_v2.yaml")]:
        assert str(shipped_config(config)) in by[name].argv, name
    s2 = by["seed1-last-stage2"]
    assert f"model.vlm={tmp_path / 'world' / 'vlm'}" in s2.argv and "train.seed=1" in s2.argv
    assert f"model.init={tmp_path / 'seed1' / 'last' / 'stage1'}" in s2.argv
    assert by["seed0-nft"].after == ["seed0-all-stage2"]
    assert f"model.source={tmp_path / 'seed0' / 'all' / 'stage2' / 'final'}" in by["seed0-grpo"].argv
    assert by["world-probe"].after == ["world-vlm"] and "--world" in by["world-probe"].argv
    assert by["world-prior-eval"].argv[-2:] == ["--out", str(tmp_path / "world" / "prior_eval")]
    # the LIM forms: the all-layer configs with the form set, on the same seed (paired)
    for form in ("softmax", "prefuse"):
        for stage in ("stage1", "stage2"):
            job = by[f"seed1-{form}-{stage}"]
            assert f"model.conditioner.fusion={form}" in job.argv and "train.seed=1" in job.argv
            assert str(shipped_config(f"toy_{stage}_v2.yaml")) in job.argv
    assert len([a for a in by["seed0-reconstruct"].argv if a == "--model"]) == 4
    assert by["seed0-nft-last"].after == ["seed0-last-stage2"]
    # the headline runs come first: both variants of every seed, then DiffusionNFT, then the rest
    assert names.index("seed1-last-stage2") < names.index("seed0-nft") < names.index("seed0-softmax-stage1")
    # the pre-training steps continue from their checkpoint when one is there
    (tmp_path / "world" / "prior" / "resume").mkdir(parents=True)
    (tmp_path / "world" / "prior" / "resume" / "state.json").write_text("{}")
    assert "--resume" in {j.name: j for j in plan_v2(tmp_path, [0])}["world-prior"].argv


def test_v2_configs_train_on_v2_and_evaluate_seen_and_heldout():
    for name in ("toy_stage1_v2.yaml", "toy_stage1_lastlayer_v2.yaml", "toy_stage2_v2.yaml",
                 "toy_stage2_lastlayer_v2.yaml"):
        cfg = load_config(shipped_config(name))
        assert (cfg.data.kind, cfg.train.evaluator) == ("toy_v2", "toy_geneval_v2"), name
    for algo in ("nft", "awm", "grpo"):
        cfg = load_grpo_config(shipped_config(f"toy_{algo}_geneval_v2.yaml"))
        assert (cfg.prompts.kind, cfg.train.evaluator, cfg.train.eval_geneval) == ("toy_v2", "toy_geneval_v2", True)
    for name in ("toy_pretrain_vlm_v2.yaml", "toy_pretrain_prior_v2.yaml", "toy_train_rewards_v2.yaml"):
        assert yaml.safe_load(shipped_config(name).read_text())["data"]["world"] == "v2", name


@pytest.mark.slow  # every v2 step, the 12-layer VLM and its probe included: over 10 minutes on a shared 2-core CPU
def test_reproduce_v2_smoke(tmp_path):
    """Every v2 step at the 'test' scale: pre-training, the probe, stages I/II, reconstruction, three RL runs."""
    res = reproduce(tmp_path, seeds=[0], scale="test", world="v2")
    row = res["per_seed"]["0"]
    for name in ("all/stage1", "all/stage2", "last/stage1", "last/stage2", "nft/before", "nft/after", "awm/after",
                 "grpo/after"):
        assert set(row[name]) == {"seen", "heldout"}, name
    assert (tmp_path / "world" / "vlm" / "layer_probe.png").is_file()
    assert (tmp_path / "seed0" / "reconstruct" / "summary.json").is_file()
    assert "held-out" in (tmp_path / "table.md").read_text()


def _summary(seen: float, heldout: float, objects: float = 1.5) -> dict:
    return {"overall": (seen + heldout) / 2, "splits": {
        "seen": {"overall": seen, "objects_per_image": objects},
        "heldout": {"overall": heldout, "objects_per_image": objects}}}


def test_v2_table_gives_paired_intervals_over_seeds(tmp_path):
    """The table's contrasts are the paired differences of the runs' own summaries, with their t-interval."""
    import json

    from parauni.toy.reproduce.v2 import collect_v2, format_v2

    def put(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    held = {"all": [0.50, 0.56, 0.53], "last": [0.45, 0.50, 0.49]}
    for seed in range(3):
        for variant, vals in held.items():
            put(tmp_path / f"seed{seed}" / variant / "stage2" / "eval" / "geneval" / "summary.json",
                _summary(0.6, vals[seed]))
        put(tmp_path / f"seed{seed}" / "nft" / "eval" / "geneval_before" / "summary.json", _summary(0.6, 0.5))
        put(tmp_path / f"seed{seed}" / "nft" / "eval" / "geneval" / "summary.json", _summary(0.7, 0.6 + 0.01 * seed))
    put(tmp_path / "world" / "prior_eval" / "summary.json", _summary(0.55, 0.40))
    res = collect_v2(tmp_path, [0, 1, 2])
    table = format_v2(res)
    # all - last on held-out: differences 0.05, 0.06, 0.04 -> mean 0.05, sd 0.01, t(2) = 4.303
    half = 4.303 * 0.01 / 3 ** 0.5
    assert f"| all − last | +0.000 [+0.000, +0.000] | +0.050 [{0.05 - half:+.3f}, {0.05 + half:+.3f}] |" in table
    assert "| prior (own text encoder) | 0.550 | 0.400 |" in table
    assert "| nft | 0.500 ± 0.000 | 0.610 ± 0.010 |" in table
    assert "| all − softmax | – | – |" in table  # not run: no number, not a zero
