"""Evaluation provenance: a benchmark folder records what made its images, and a run never scores another
model's images (``parauni eval geneval|dpg``, ``parauni toy eval``, the end-of-run evaluations)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from parauni.cli import main
from parauni.eval import provenance as prov

ROOT = Path(__file__).resolve().parents[1]
TOY_META = str(ROOT / "src" / "parauni" / "toy" / "data" / "toy_geneval_metadata.jsonl")


def _geneval(model, out, *extra):
    return main(["eval", "geneval", "--model", model, "--metadata", TOY_META, "--out", str(out), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "1", "--threads", "1", *extra])


def _images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/samples/*.png"))}


def test_geneval_refuses_another_models_images(tmp_path, capsys):
    out = tmp_path / "g"
    assert _geneval("toy-all-layers", out) == 0
    first = _images(out)
    record = json.loads((out / prov.PROVENANCE_FILE).read_text())
    assert record["model"] == "toy-all-layers" and record["steps"] == 1 and record["images_per_prompt"] == 1
    assert record["limit"] == 1 and record["prompts"] == 6 and len(record["weights_sha256"]) == 64
    assert record["guidance"] == 4.5
    assert record["vlm"].startswith("InternVLForConditionalGeneration@parauni:toy/weights/vlm#")
    assert f"| toy-all-layers (weights {record['weights_sha256'][:8]}) |" in capsys.readouterr().out

    # another model into the same folder: refused, naming what differs; nothing touched
    assert _geneval("toy-last-layer", out) == 2
    err = capsys.readouterr().err
    assert "weights_sha256" in err and "'toy-all-layers' there, 'toy-last-layer' now" in err and "--overwrite" in err
    assert _images(out) == first
    # other settings: refused, naming the setting
    assert _geneval("toy-all-layers", out, "--seed", "3") == 2
    assert "seed: 0 in the folder, 3 now" in capsys.readouterr().err
    # the same settings resume (nothing regenerated), also with an explicit --resume
    assert _geneval("toy-all-layers", out, "--resume") == 0
    assert _images(out) == first
    assert _geneval("toy-all-layers", out, "--guidance", "4.5") == 0  # the pipeline's default, stated
    assert _images(out) == first
    # --overwrite regenerates every image with the new model, and the score names it
    assert _geneval("toy-last-layer", out, "--overwrite") == 0
    printed = capsys.readouterr().out
    record = json.loads((out / prov.PROVENANCE_FILE).read_text())
    assert record["model"] == "toy-last-layer"
    assert f"| toy-last-layer (weights {record['weights_sha256'][:8]}) |" in printed
    second = _images(out)
    assert second.keys() == first.keys() and second != first
    # no temporary file is left anywhere, and samples/ only holds the images
    assert not list(out.rglob("*.partial"))
    assert all(re.fullmatch(r"\d{4}\.png", p.name) for p in out.glob("*/samples/*"))


def test_geneval_limit_is_per_task(tmp_path):
    out = tmp_path / "g"
    assert main(["toy", "eval", "--model", "prior", "--out", str(out), "--limit", "2", "--images-per-prompt", "1",
                 "--steps", "1", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task_images"] == {t: 2 for t in ("single_object", "two_object", "counting", "colors",
                                                     "position", "color_attr")}
    assert summary["overall"] == pytest.approx(sum(summary["tasks"].values()) / 6)


def test_folder_without_provenance_is_refused(tmp_path, capsys):
    out = tmp_path / "g"
    (out / "00000" / "samples").mkdir(parents=True)
    (out / "00000" / "samples" / "0000.png").write_bytes(b"not ours")
    assert _geneval("prior", out) == 2
    assert "no provenance.json" in capsys.readouterr().err
    assert (out / "00000" / "samples" / "0000.png").read_bytes() == b"not ours"
    # a half-written image of a killed run (beside samples/) is removed, never scored
    (out / "00000" / ".0000.png.partial").write_bytes(b"half")
    assert _geneval("prior", out, "--overwrite") == 0
    assert not (out / "00000" / ".0000.png.partial").exists()
    # the first prompt of each of the six tasks, one image each: exactly the images in samples/ are scored
    scored = [json.loads(x)["filename"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(scored) == [str(out / f"{i:05d}" / "samples" / "0000.png") for i in range(6)]


def test_dpg_records_and_checks_provenance(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"item_id": f"i{n}", "prompt": f"prompt {n}"}) + "\n" for n in range(3)))
    out = tmp_path / "dpg"
    args = ["eval", "dpg", "--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--steps", "1",
            "--limit", "2", "--threads", "1"]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["i0.png", "i1.png"]  # --limit: the first N prompts
    record = json.loads((out / prov.PROVENANCE_FILE).read_text())
    assert record["layout"] == "dpg" and record["images_per_prompt"] == 4 and record["outputs"] == ["i0", "i1"]
    assert "tiny (weights" in capsys.readouterr().out
    assert main([*args, "--steps", "2"]) == 2
    assert "steps: 1 in the folder, 2 now" in capsys.readouterr().err
    before = (out / "i0.png").read_bytes()
    assert main([*args, "--steps", "2", "--overwrite"]) == 0
    assert (out / "i0.png").read_bytes() != before
    assert json.loads((out / prov.PROVENANCE_FILE).read_text())["steps"] == 2


def test_decide_is_pure_and_names_differences():
    rec = {"model": "a", "weights_sha256": "0" * 64, "steps": 20, "created": "x"}
    same = {**rec, "model": "a-by-another-path", "created": "y"}  # informational keys are not compared
    assert prov.differences(rec, same) == []
    assert prov.decide(rec, same, has_outputs=True) == "resume"
    other = {**rec, "steps": 8, "weights_sha256": "1" * 64}
    assert prov.differences(rec, other) == ["weights_sha256: 000000000000… in the folder, 111111111111… now",
                                            "steps: 20 in the folder, 8 now"]
    with pytest.raises(ValueError, match="steps: 20 in the folder, 8 now"):
        prov.decide(rec, other, has_outputs=True, mode="resume")
    assert prov.decide(rec, other, has_outputs=True, mode="refresh") == "overwrite"
    assert prov.decide(rec, rec, has_outputs=True, mode="overwrite") == "overwrite"
    assert prov.decide(None, rec, has_outputs=False) == "start"
    with pytest.raises(ValueError, match="mode must be one of"):
        prov.decide(None, rec, has_outputs=False, mode="keep")


def test_resumed_training_rescores_the_new_weights(tmp_path, capsys):
    """A finished 2-step run resumed to 3 steps regenerates its final GenEval images (not the step-2 ones).
    (A long warm-up keeps the learning rate of step 3 above 0.)"""
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "toy_stage1.yaml"), "model.source=tiny", "data.resolution=16",
            "train.batch_size=2", "train.logger=none", "train.log_every=1", "optim.warmup_steps=10",
            "train.eval_geneval=true", "train.eval_limit=1", "train.eval_images_per_prompt=1", "train.eval_steps=1",
            f"train.output_dir={run}", "--no-progress", "--threads", "1"]
    assert main([*args, "train.steps=2"]) == 0
    folder = run / "eval" / "geneval"
    first, rec1 = _images(folder), json.loads((folder / prov.PROVENANCE_FILE).read_text())
    assert len(first) == 6 and rec1["model"].endswith("(step 2)")
    assert main([*args, "train.steps=3", "--resume"]) == 0
    rec2 = json.loads((folder / prov.PROVENANCE_FILE).read_text())
    assert rec2["model"].endswith("(step 3)") and rec2["weights_sha256"] != rec1["weights_sha256"]
    assert _images(folder) != first


def test_resumed_grpo_rescores_the_new_weights(tmp_path):
    """GRPO 1 -> 2 epochs: the final GenEval images are those of the epoch-2 EMA weights (the 'before' ones stay)."""
    import numpy as np
    import torch

    from parauni.rewards.base import WeightedReward
    from parauni.rl.config import load_grpo_config
    from parauni.rl.grpo import GRPOTrainer

    def bright(images, prompts, metadata=None):
        return torch.tensor([float(np.asarray(im).mean() / 255.0) for im in images])

    def trainer(epochs, resume=False):
        cfg = load_grpo_config(None, [
            "model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4",
            "model.lora_rank=4", "model.lora_alpha=8", "optim.train_batch=4", "rewards.weights={bright: 1.0}",
            "ldam.enabled=false", "train.save_every=1", "optim.ema_every=1", f"train.output_dir={tmp_path / 'rl'}",
            f"train.epochs={epochs}", "train.eval_geneval=true", "train.eval_limit=1", "train.eval_steps=1",
            "train.eval_images_per_prompt=1"])
        return GRPOTrainer(cfg, rewards=WeightedReward({"bright": 1.0}, rewards={"bright": bright}), progress=False,
                           resume=resume)

    trainer(1).run()
    after, before = tmp_path / "rl" / "eval" / "geneval", tmp_path / "rl" / "eval" / "geneval_before"
    rec1, first, first_before = prov.read(after), _images(after), _images(before)
    assert rec1["model"].endswith("(epoch 1)") and len(first) == 6
    resumed = trainer(2, resume="latest")
    resumed.run()
    rec2 = prov.read(after)
    assert rec2["model"].endswith("(epoch 2)") and rec2["weights_sha256"] != rec1["weights_sha256"]
    assert _images(after) != first and _images(before) == first_before


def test_resume_remakes_a_damaged_image_and_names_it(tmp_path, caplog):
    """A truncated PNG was kept as finished on --resume, and scoring it failed with 'image file is truncated' and
    no path."""
    out = tmp_path / "g"
    assert _geneval("toy-all-layers", out) == 0
    first = _images(out)
    damaged = sorted(out.glob("*/samples/*.png"))[2]
    damaged.write_bytes(damaged.read_bytes()[:40])
    with caplog.at_level("WARNING"):
        assert _geneval("toy-all-layers", out, "--resume") == 0
    assert f"{damaged} is damaged" in caplog.text
    assert _images(out) == first  # made again, the same bytes (its seed is fixed)
