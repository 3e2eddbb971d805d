"""Every writer holds its folder's lock (``toy eval`` too) and readers (``report``, ``export``) refuse a folder being
written, naming the writer's PID; bad files and paths are one line naming them: ``--score-only`` images, an
``--out`` that is a file, ``model.lora_targets``, GenEval metadata the toy scorer cannot score; ``base:`` mappings
mean what the command line means; an empty config is refused."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parauni.cli import main
from parauni.errors import ConfigError
from parauni.rl.config import load_grpo_config
from parauni.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
CONFIG = str(ROOT / "configs" / "toy_stage1.yaml")
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false"]
TOY_META = ROOT / "src" / "parauni" / "toy" / "data" / "toy_geneval_metadata.jsonl"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err) and "internal error" not in "\n".join(err), err
    return err[-1]


class Holder:
    """Another process holding a folder's lock, as a running evaluation or training run does."""

    def __init__(self, folder: Path, what: str):
        code = (f"import sys, time; from parauni.utils.locks import hold_folder_lock\n"
                f"with hold_folder_lock({str(folder)!r}, {what!r}):\n    print('held', flush=True); time.sleep(120)")
        self.p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": SRC})
        assert self.p.stdout.readline().strip() == "held"

    def __enter__(self) -> int:
        return self.p.pid

    def __exit__(self, *exc) -> None:
        self.p.kill()
        self.p.wait()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", CONFIG, *TINY, "train.steps=1", "train.save_every=1", f"train.output_dir={folder}",
                 "--no-progress"]) == 0
    return folder


def test_toy_eval_takes_its_folders_lock(tmp_path, capsys):
    """The survey's SILENT: toy eval wrote into a folder an `eval geneval` was writing; geneval then labelled the
    other model's scores as its own."""
    out = tmp_path / "eval"
    with Holder(out, "evaluation") as pid:
        capsys.readouterr()
        assert main(["toy", "eval", "--model", "prior", "--out", str(out), "--overwrite", "--limit", "1",
                     "--images-per-prompt", "1", "--steps", "1"]) == 2
        line = one_line(capsys)
        assert f"PID {pid}" in line and str(out) in line, line
    assert sorted(os.listdir(out)) == [".lock"]  # nothing written
    assert main(["toy", "eval", "--model", "prior", "--out", str(out), "--limit", "1", "--images-per-prompt", "1",
                 "--steps", "1"]) == 0


def test_report_and_export_refuse_a_folder_being_written(run, tmp_path, capsys):
    """The survey's SILENT: a report of a run whose evaluation was being rewritten showed partial samples and no
    table, without a word."""
    with Holder(run / "eval" / "geneval", "evaluation") as pid:
        capsys.readouterr()
        assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
        line = one_line(capsys)
        assert f"PID {pid}" in line and "evaluation" in line and str(run / "eval" / "geneval") in line, line
        assert not (tmp_path / "r.html").exists()
    with Holder(run, "training run") as pid:
        assert main(["export", str(run), "--out", str(tmp_path / "pipe")]) == 2
        line = one_line(capsys)
        assert f"PID {pid}" in line and "training run" in line, line
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0  # once the writers are gone


def _layout(folder: Path) -> Path:
    meta = json.loads(TOY_META.read_text().splitlines()[0])
    rng = np.random.default_rng(0)
    for i in range(2):
        d = folder / f"{i:05d}" / "samples"
        d.mkdir(parents=True)
        (d.parent / "metadata.jsonl").write_text(json.dumps(meta))
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{k:05d}.png")
    return folder


@pytest.mark.parametrize("case", ["not an image", "truncated", "a file"])
def test_score_only_names_the_bad_file(tmp_path, capsys, case):
    d = _layout(tmp_path / "imgs")
    png = d / "00001" / "samples" / "00001.png"
    if case == "not an image":
        png.write_text("hello, not a PNG")
    elif case == "truncated":
        png.write_bytes(png.read_bytes()[:60])
    else:
        d = tmp_path / "afile"
        d.write_text("x")
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "toy"]) == 2
    line = one_line(capsys)
    expected = {"not an image": "is not an image", "truncated": "truncated or damaged", "a file": "is a file"}[case]
    assert expected in line and str(png if case != "a file" else d) in line, line
    assert not (d / "results.jsonl").exists() if d.is_dir() else True


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (["generate", "--model", "tiny", "--prompt", "a", "--out", str(blocker)],
                 ["cache-latents", CONFIG, *TINY, "--out", str(blocker)],
                 ["demo", "--out", str(blocker / "sub")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        line = one_line(capsys)
        assert str(blocker) in line and "is a file" in line, line
    assert blocker.read_text() == "x"


def test_lora_targets_that_name_no_layer_list_the_layers_that_exist(tmp_path, capsys):
    assert main(["grpo", str(ROOT / "configs" / "toy_grpo.yaml"), "model.source=tiny",
                 "model.lora_targets=[nonexistent_proj]", f"train.output_dir={tmp_path / 'g'}", "--no-progress"]) == 2
    line = one_line(capsys)
    assert "nonexistent_proj" in line and "attn1.to_q" in line and "ff.conv_inverted" in line, line


def test_base_mappings_are_replaced_unless_merged_and_an_empty_config_is_refused(tmp_path):
    """The survey's SILENT: a child config's rewards.weights were merged into its base's, while the same value on
    the command line replaced them."""
    base = load_grpo_config(ROOT / "configs" / "toy_grpo.yaml", [])
    assert len(base.rewards.weights) > 1
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "toy_grpo.yaml").read_text())
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nrewards:\n  weights: {toy_geneval: 2.0}\ntrain:\n  epochs: 3\n")
    cfg = load_grpo_config(child, [])
    assert dict(cfg.rewards.weights) == {"toy_geneval": 2.0}  # only these rewards
    assert cfg.train.epochs == 3 and cfg.sampling.group_size == base.sampling.group_size  # sections still merge
    line = load_grpo_config(tmp_path / "base.yaml", ["rewards.weights={toy_geneval: 2.0}"])
    assert dict(line.rewards.weights) == dict(cfg.rewards.weights)  # file and command line mean the same
    child.write_text("base: base.yaml\nmerge: [rewards.weights]\nrewards:\n  weights: {toy_geneval: 2.0}\n")
    assert dict(load_grpo_config(child, []).rewards.weights) == {**dict(base.rewards.weights), "toy_geneval": 2.0}
    child.write_text("base: base.yaml\nmerge: [train.epochs]\n")
    with pytest.raises(ConfigError, match="not a mapping-valued key"):
        load_grpo_config(child, [])
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing\n")
    for load in (load_config, load_grpo_config):
        with pytest.raises(ConfigError, match="the config is empty"):
            load(empty, [])


def test_toy_geneval_metadata_with_a_made_up_task_or_colour_is_refused(tmp_path, capsys):
    first = TOY_META.read_text().splitlines()[0]
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join([
        first,
        json.dumps({"tag": "made_up_task", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"}),
        json.dumps({"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "mauve"}],
                    "prompt": "a mauve circle"})]) + "\n")
    assert main(["toy", "eval", "--model", "prior", "--metadata", str(meta), "--out", str(tmp_path / "o"),
                 "--images-per-prompt", "1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{meta}, line 2, field 'tag'" in err and "made_up_task" in err, err
    assert f"{meta}, line 3, field 'include[0].color'" in err and "mauve" in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_negative_reward_weight_is_allowed_and_said_once(tmp_path, caplog):
    run = tmp_path / "g"
    (run / "checkpoint-000002").mkdir(parents=True)  # ends the command before any model: a fresh start is refused
    (run / "checkpoint-000002" / "grpo_state.json").write_text('{"epoch": 2}')
    with caplog.at_level(logging.WARNING):
        assert main(["grpo", str(ROOT / "configs" / "toy_grpo.yaml"), "model.source=tiny",
                     "rewards.weights={toy_quality: -0.5, toy_geneval: 1.0}", f"train.output_dir={run}"]) == 2
    said = [r.getMessage() for r in caplog.records if "negative weight" in r.getMessage()]
    assert len(said) == 1 and "toy_quality=-0.5" in said[0] and "penalty" in said[0], said
