"""Layer-response analysis: exact zero at scale 0, perturbations change images, drop = fusing the other layers,
outputs with one table row per group and mode, and the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parauni
from parauni import build_tiny
from parauni.analysis import analyze_layers, fuse_without, group_noise, layer_groups, read_prompts, write_outputs
from parauni.cli import main

PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle above a yellow circle"]


class Brightness:
    """Mean pixel value in [0, 1]; works on any image size."""

    def __call__(self, images, prompts, metadata=None):
        return torch.tensor([np.asarray(im, dtype=np.float64).mean() / 255 for im in images])


class Redness:
    """Mean red minus mean blue; also records the metadata it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, prompts, metadata=None):
        self.seen.extend(metadata)
        return torch.tensor([float(np.asarray(im, dtype=np.float64)[..., 0].mean() -
                                   np.asarray(im, dtype=np.float64)[..., 2].mean()) for im in images])


def _run(pipe, **kw):
    args = dict(rewards={"brightness": Brightness(), "redness": Redness()}, steps=2, images_per_prompt=2,
                batch_size=2, model_name="tiny")
    return analyze_layers(pipe, PROMPTS, **{**args, **kw})


def test_scale_zero_reproduces_the_baseline_exactly(tiny_pipe):
    res = _run(tiny_pipe, modes=["perturb"], scale=0.0)
    assert list(res["modes"]) == ["perturb"]
    for row in res["modes"]["perturb"].values():
        assert row["brightness"]["mean"] == 0.0 and row["redness"]["mean"] == 0.0
        assert row["pixel_change"]["mean"] == 0.0


def test_perturb_and_drop_change_images_and_write_one_row_per_group(tiny_pipe, tmp_path):
    res = _run(tiny_pipe, modes=["perturb", "drop"], scale=1.0)
    assert list(res["groups"]) == ["shallow", "middle", "deep"]
    assert res["groups"]["shallow"]["vlm_layers"] == [0, 1] and res["groups"]["deep"]["read"] == [3]
    for mode in ("perturb", "drop"):
        for row in res["modes"][mode].values():
            assert row["pixel_change"]["mean"] > 0 and row["pixel_change"]["n"] == len(PROMPTS)
            assert row["brightness"]["se"] is not None
    assert any(row["brightness"]["mean"] != 0 for row in res["modes"]["perturb"].values())
    paths = write_outputs(res, tmp_path)
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["json"].read_text())["modes"]["drop"]["middle"]["redness"]["n"] == len(PROMPTS)
    md = paths["md"].read_text()
    assert md.count("## ") == 2
    for g in ("shallow", "middle", "deep"):
        assert sum(line.startswith(f"| {g} |") for line in md.splitlines()) == 2  # one per mode
    assert "| group | VLM layers | Δ brightness | Δ redness | mean abs Δpixel |" in md
    assert Image.open(paths["png"]).size[0] > 100


def test_results_do_not_depend_on_batching(tiny_pipe):
    a = _run(tiny_pipe, modes=["perturb"], batch_size=1)
    b = _run(tiny_pipe, modes=["perturb"], batch_size=3)
    for g in a["groups"]:
        assert a["modes"]["perturb"][g]["brightness"]["mean"] == pytest.approx(
            b["modes"]["perturb"][g]["brightness"]["mean"], abs=1e-5)


@pytest.mark.parametrize("fusion", ["mean", "softmax", "prefuse"])
def test_drop_nothing_is_the_conditioner_and_mean_drop_averages_the_rest(fusion):
    pipe = build_tiny(seed=1, fusion=fusion)
    cond = pipe.conditioner
    if fusion != "mean":
        with torch.no_grad():
            cond.lim.layer_logits.normal_()
    states = pipe.layer_states(PROMPTS)  # (4, 3, N, D)
    with torch.no_grad():
        full = cond(states)
    torch.testing.assert_close(fuse_without(cond, states, []), full, rtol=0, atol=1e-6)
    assert not torch.allclose(fuse_without(cond, states, [0]), full)
    if fusion == "mean":  # full = (3 * without layer 0 + layer 0 alone) / 4
        rebuilt = (3 * fuse_without(cond, states, [0]) + fuse_without(cond, states, [1, 2, 3])) / 4
        torch.testing.assert_close(rebuilt, full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="every layer"):
        fuse_without(cond, states, [0, 1, 2, 3])


def test_group_noise_is_zero_outside_the_group_and_scales_linearly():
    states = torch.randn(4, 2, 8, 32) * torch.tensor([1.0, 1.0, 5.0, 1.0]).view(4, 1, 1, 1)
    one = group_noise(states, [2], 1.0, 3, [7, 8], seed=0, group_id=1)
    assert one.shape == (4, 6, 8, 32)
    assert one[[0, 1, 3]].abs().sum() == 0
    assert one[2].std().item() == pytest.approx(states[2].std().item(), rel=0.15)
    torch.testing.assert_close(group_noise(states, [2], 0.5, 3, [7, 8], 0, 1), 0.5 * one)
    # the noise of prompt 8 does not depend on which prompts share its batch
    torch.testing.assert_close(group_noise(states[:, 1:], [2], 1.0, 3, [8], 0, 1), one[:, 3:])
    assert not torch.allclose(group_noise(states, [2], 1.0, 3, [7, 8], 0, 0), one)  # another group id


def test_groups_and_errors(tiny_pipe):
    assert layer_groups(4, "per-layer", [10, 11, 12, 13]) == {f"layer_{i}": [i - 10] for i in range(10, 14)}
    with pytest.raises(ValueError, match="unknown layer grouping"):
        layer_groups(4, "halves")
    with pytest.raises(ValueError, match="cannot be dropped"):
        _run(tiny_pipe, groups={"all": [0, 1, 2, 3]}, modes=["drop"])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        _run(tiny_pipe, groups={"bad": [4]})


def test_prompt_files_and_metadata_reach_the_rewards(tiny_pipe, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\ntwo squares\n")
    assert read_prompts(tmp_path / "p.txt") == (["a red circle", "two squares"], [None, None])
    recs = [{"prompt": "a photo of a circle", "tag": "single_object", "include": [{"class": "circle", "count": 1}]},
            {"prompt": "two squares", "tag": "counting", "include": [{"class": "square", "count": 2}]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    prompts, meta = read_prompts(tmp_path / "m.jsonl", limit=1)  # --limit: the first N of each task
    assert prompts == [r["prompt"] for r in recs] and meta == recs
    assert read_prompts(tmp_path / "p.txt", limit=1) == (["a red circle"], [None])  # no tasks: the first N
    red = Redness()
    analyze_layers(tiny_pipe, [r["prompt"] for r in recs], recs, rewards={"red": red}, modes=["perturb"], steps=1,
                   images_per_prompt=2)
    assert red.seen[:4] == [recs[0], recs[0], recs[1], recs[1]]  # per image, baseline first


def test_cli_default_toy_rewards_on_geneval_records(tmp_path, capsys):
    meta = Path(parauni.__file__).parent / "toy" / "data" / "toy_geneval_metadata.jsonl"
    rc = main(["analyze", "layers", "--model", "tiny", "--prompts", str(meta), "--out", str(tmp_path), "--limit", "2",
               "--steps", "1", "--images-per-prompt", "1", "--groups", "per-layer", "--mode", "perturb"])
    assert rc == 0
    res = json.loads((tmp_path / "layer_response.json").read_text())
    assert res["rewards"] == ["toy_alignment", "toy_quality", "toy_geneval"] and not res["skipped_rewards"]
    assert list(res["modes"]) == ["perturb"] and list(res["groups"]) == [f"layer_{i}" for i in range(4)]
    assert "| layer_3 | 3 |" in capsys.readouterr().out


def test_cli_weights_add_a_total_and_text_prompts_skip_geneval(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\ntwo squares\n")
    rc = main(["analyze", "layers", "--model", "tiny", "--prompts", str(tmp_path / "p.txt"), "--out",
               str(tmp_path / "o"), "--steps", "1", "--images-per-prompt", "1", "--mode", "drop",
               "--rewards", "toy_quality=0.5", "toy_alignment=2", "toy_geneval=1"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "layer_response.json").read_text())
    assert res["rewards"] == ["toy_quality", "toy_alignment", "total"] and "toy_geneval" in res["skipped_rewards"]
    base = res["baseline"]
    assert base["total"]["mean"] == pytest.approx(0.5 * base["toy_quality"]["mean"] + 2 * base["toy_alignment"]["mean"])
    assert "Δ total" in (tmp_path / "o" / "layer_response.md").read_text()
    opts = '{"toy_alignment": {"path": "/nonexistent/alignment"}}'  # options reach the reward's factory
    assert main(["analyze", "layers", "--model", "tiny", "--prompts", str(tmp_path / "p.txt"), "--out",
                 str(tmp_path / "o2"), "--steps", "1", "--reward-options", opts]) == 2
    assert main(["analyze", "layers", "--model", "tiny", "--prompts", str(tmp_path / "p.txt"), "--out",
                 str(tmp_path / "o2"), "--steps", "1", "--reward-options", "[1]"]) == 2
    assert main(["analyze", "layers", "--model", "tiny", "--prompts", str(tmp_path / "missing.txt"), "--out",
                 str(tmp_path / "o")]) == 2
