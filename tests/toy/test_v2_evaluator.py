"""The end-of-run evaluation of a run trained on the v2 toy world is the v2 toy GenEval (seen and held-out), chosen
through the registry from the run's data kind (stages I/II) or prompt kind (stage III), or named by
``train.evaluator``; an unknown name fails before any training."""

from __future__ import annotations

import json
from pathlib import Path

from parauni.cli import main
from parauni.registry import EVALUATOR_OF_KIND, EVALUATORS

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["train.steps=1", "train.batch_size=2", "train.logger=none", "train.log_every=1", "train.save_every=1",
          "optim.warmup_steps=1", "train.eval_geneval=true", "train.eval_limit=1", "train.eval_steps=2"]
NFT = ["prompts.per_epoch=1", "prompts.pool=1", "sampling.group_size=2", "sampling.steps=2", "optim.train_batch=2",
       "optim.steps_per_epoch=1", "train.epochs=1", "train.save_every=1", "train.logger=none",
       "train.eval_geneval=true", "train.eval_before=false", "train.eval_limit=1", "train.eval_steps=2",
       "train.eval_images_per_prompt=1", "train.eval_guidance_scales=[1.0]", "--no-progress"]


def summary(out: Path) -> dict:
    return json.loads((out / "eval" / "geneval" / "summary.json").read_text())


def test_the_kind_names_its_evaluator():
    assert EVALUATOR_OF_KIND.get("toy_v2") == "toy_geneval_v2"
    assert "toy_geneval_v2" in EVALUATORS and "toy" not in EVALUATOR_OF_KIND  # v1 runs keep the default


def test_stage1_on_v2_is_evaluated_on_seen_and_heldout(tmp_path):
    out = tmp_path / "v2"
    assert main(["train", str(ROOT / "configs/toy_stage1.yaml"), "data.kind=toy_v2", f"train.output_dir={out}",
                 *STAGE1]) == 0
    s = summary(out)
    assert set(s["splits"]) == {"seen", "heldout"}
    assert {json.loads(r["metadata"])["split"] for r in map(json.loads, (out / "eval" / "geneval" /
            "results.jsonl").read_text().splitlines())} == {"seen", "heldout"}


def test_train_evaluator_overrides_the_kind(tmp_path):
    out = tmp_path / "v1eval"
    assert main(["train", str(ROOT / "configs/toy_stage1.yaml"), "data.kind=toy_v2", "train.evaluator=toy_geneval",
                 f"train.output_dir={out}", *STAGE1]) == 0
    assert "splits" not in summary(out)  # the v1 prompts carry no split


def test_unknown_evaluator_fails_before_training(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["train", str(ROOT / "configs/toy_stage1.yaml"), "train.evaluator=toy_genevl_v2",
                 f"train.output_dir={out}", *STAGE1]) != 0
    err = capsys.readouterr().err
    assert "toy_geneval_v2" in err and "train.evaluator" in err
    assert not list(out.glob("checkpoint-*"))


def test_stage3_on_v2_prompts_is_evaluated_on_seen_and_heldout(tmp_path):
    out = tmp_path / "nft"
    assert main(["rl", str(ROOT / "configs/toy_nft_geneval.yaml"), "prompts.kind=toy_v2",
                 f"train.output_dir={out}", *NFT]) == 0
    assert set(summary(out)["splits"]) == {"seen", "heldout"}
