"""Bad input fails fast, before any model is built, with one ``error:`` line naming the option or config key, the
value and what is allowed; exit status 2 and no Python traceback (``--debug`` shows it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parauni.cli import main
from parauni.cli.bad_input import bad_input_message
from parauni.errors import ConfigError, UnknownKeyError, UsageError
from parauni.rl.config import load_grpo_config
from parauni.train.config import check_resolution, load_config, save_config
from parauni.utils.names import closest_name

ROOT = Path(__file__).resolve().parents[1]
GEN = ["generate", "--model", "tiny", "--prompt", "a red circle"]


class _NoModels:
    """Fails the test if a model is built: bad input must be refused before any work."""

    def __enter__(self):
        import parauni.pipelines.loading as loading

        def refuse(*args, **kwargs):
            raise AssertionError("a model was built before the bad input was refused")

        # every model source goes through build_tiny or one of the two registries
        self.loading, self.tiny = loading, loading.build_tiny
        self.tables = [(table, table.get) for table in (loading.MODEL_BUILDERS, loading.MODELS)]
        loading.build_tiny = refuse
        for table, _ in self.tables:
            table.get = refuse
        return self

    def __exit__(self, *exc):
        self.loading.build_tiny = self.tiny
        for table, get in self.tables:
            table.get = get
        return False


def fails(capsys, argv: list[str], *expected: str) -> str:
    """Run the real CLI; it must return 2, build no model and print one error naming ``expected``."""
    with _NoModels():
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse's errors (options) exit, as argparse does; config errors return 2
            rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["--guidance", "nan"], ["--guidance", "finite number >= 0", "'nan'"]),
    (["--guidance", "inf"], ["--guidance", "'inf'"]),
    (["--steps", "0"], ["--steps", "integer >= 1", "'0'"]),
    (["--height", "0", "--width", "0"], ["--height", "positive multiple of 8", "'0'"]),
    (["--width", "30"], ["--width", "positive multiple of 8", "'30'"]),
    (["--seed", "-1"], ["--seed", "integer >= 0", "'-1'"]),
    (["--steps", "ten"], ["--steps", "'ten'"]),
])
def test_generate_numeric_options(tmp_path, capsys, argv, expected):
    fails(capsys, [*GEN, "--out", str(tmp_path / "o"), *argv], *expected)
    assert not (tmp_path / "o").exists()


def test_generate_empty_prompt_folder_image_and_missing_cuda(tmp_path, capsys, monkeypatch):
    fails(capsys, ["generate", "--model", "tiny", "--prompt", "", "--out", str(tmp_path)],
          "--prompt", "non-empty string", "''")
    fails(capsys, [*GEN, "--out", str(tmp_path), "--image", str(tmp_path)], "--image", "is a folder, not an image")
    fails(capsys, [*GEN, "--out", str(tmp_path), "--image", str(tmp_path / "nope.png")], "nope.png", "does not exist")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails(capsys, [*GEN, "--out", str(tmp_path), "--device", "cuda"],
          "--device", "CUDA is not available on this machine; use --device cpu")
    fails(capsys, [*GEN, "--out", str(tmp_path), "--device", "gpu0"], "--device", "'gpu0'")


@pytest.mark.parametrize("argv, expected", [
    (["eval", "geneval", "--images-per-prompt", "0"], ["--images-per-prompt", "integer >= 1", "'0'"]),
    (["eval", "geneval", "--limit", "-298"], ["--limit", "integer >= 1", "'-298'"]),
    (["eval", "geneval", "--batch-size", "0"], ["--batch-size", "integer >= 1", "'0'"]),
    (["eval", "geneval", "--resolution", "33"], ["--resolution", "multiple of 8", "'33'"]),
    (["eval", "dpg", "--limit", "0"], ["--limit", "'0'"]),
    (["eval", "dpg", "--guidance", "-1"], ["--guidance", ">= 0", "'-1'"]),
])
def test_eval_options(tmp_path, capsys, argv, expected):
    fails(capsys, [*argv, "--model", "prior", "--out", str(tmp_path / "o")], *expected)
    assert not (tmp_path / "o").exists()


def test_other_commands_check_their_numbers(tmp_path, capsys):
    out = str(tmp_path / "o")
    fails(capsys, ["eval", "reconstruct", "--model", "tiny", "--images", str(tmp_path / "none"), "--out", out],
          "--images", "does not exist")
    fails(capsys, ["analyze", "layers", "--model", "tiny", "--prompts", "p.txt", "--out", out, "--scale", "0"],
          "--scale", "in (0, 100]")
    fails(capsys, ["analyze", "layers", "--model", "tiny", "--prompts", "p.txt", "--out", out, "--scale", "1e30"],
          "--scale", "in (0, 100]")  # the noise swamped the states: NaN images and a table of equal values
    fails(capsys, ["cache-latents", "configs/toy_stage1.yaml", "--out", out, "--batch-size", "0"], "--batch-size")
    fails(capsys, ["report", "run", "--out", out, "--samples-per-task", "-1"], "--samples-per-task", ">= 0")
    fails(capsys, ["demo", "--rl-epochs", "0"], "--rl-epochs", "integer >= 1")
    fails(capsys, ["toy", "pretrain-prior", "--lr", "0"], "--lr", "> 0")
    fails(capsys, ["toy", "pretrain-prior", "--ema", "1.5"], "--ema", "in [0, 1)")
    fails(capsys, ["toy", "pretrain-vlm", "--out", out, "--batch-size", "0"], "--batch-size")
    fails(capsys, ["toy", "train-rewards", "--pool", "0"], "--pool")
    fails(capsys, ["toy", "eval", "--model", "prior", "--images-per-prompt", "0"], "--images-per-prompt")
    fails(capsys, ["toy", "reproduce", "--jobs", "0"], "--jobs")
    fails(capsys, ["train", "configs/toy_stage1.yaml", "--threads", "0"], "--threads", "integer >= 1")
    fails(capsys, ["generate", "--model", "tiny"], "required", "--prompt")
    assert not (tmp_path / "o").exists()


def test_every_numeric_option_has_a_range_check():
    import argparse

    from parauni.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            else:
                yield parser.prog, action

    found = list(walk(build_parser()))
    assert len(found) > 100
    for prog, action in found:
        assert action.type not in (int, float), f"{prog} {action.option_strings}: a bare {action.type.__name__}"


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=inf", "optim.lr: expected a finite number > 0, got inf"),
    ("optim.lr=nan", "optim.lr: expected a finite number > 0, got nan"),
    ("optim.lr=abc", "optim.lr: expected a finite number > 0, got 'abc'"),
    ("train.batch_size=[8,8]", "train.batch_size: expected an integer >= 1, got [8, 8]"),
    ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
    ("optim.betas=[0.9]", "optim.betas: expected a list of 2 values, each a finite number in [0, 1), got [0.9]"),
    ("data.resolution=0", "data.resolution: expected a positive multiple of 8, got 0"),
    ("data.resolution=33", "data.resolution: expected a positive multiple of 8, got 33"),
    ("train.mixed_precision=no", "quote it, e.g. train.mixed_precision='no'"),
    ("train.stage=III", "train.stage: expected one of I, II, got 'III'"),
    ("train.max_steps=5", "unknown config key 'train.max_steps'; did you mean 'train.steps'?"),
    ("optim.learning_rate=1e-3", "unknown config key 'optim.learning_rate' (allowed in section 'optim': betas, eps"),
    ("data.kind=jsonl", "data.kind: expected one of json, folder, webdataset, latents, toy, toy_v2, got 'jsonl'"),
])
def test_train_config_errors(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    fails(capsys, ["train", "configs/toy_stage1.yaml", f"train.output_dir={out}", override], "parauni train", expected)
    assert not out.exists()


@pytest.mark.parametrize("override, expected", [
    ("train.save_every=0", "train.save_every: expected an integer >= 1, got 0"),
    ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
    ("prompts.per_epoch=0", "prompts.per_epoch: expected an integer >= 1, got 0"),
    ("sampling.group_size=1", "sampling.group_size: expected an integer >= 2, got 1"),
    ("rewards.weights={nope: 1.0}", "rewards.weights: unknown reward 'nope'; expected one of aesthetic"),
    ("rewards.weights={no.such.module:Reward: 1.0}", "reward 'no.such.module:Reward': cannot import 'no.such.module'"),
    ("rewards.weights={parauni.rewards.redness:Nope: 1.0}", "'parauni.rewards.redness' has no factory 'Nope'"),
    ("rewards.weights={toy_quality: high}", "rewards.weights: expected a non-empty mapping"),
    ("sampling.noise_level=0", "sampling.noise_level: expected a finite number > 0, got 0"),
    ("optim.kl_form=other", "optim.kl_form: expected one of"),
])
def test_grpo_config_errors(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    fails(capsys, ["grpo", "configs/toy_grpo.yaml", f"train.output_dir={out}", override], "parauni grpo", expected)
    assert not out.exists()


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  source: toy\ntrain:\n  steps: 3\n   batch_size: [1,\n")
    fails(capsys, ["train", str(bad)], str(bad), "line 5", "invalid YAML")
    bad.write_text("- model\n- train\n")
    fails(capsys, ["train", str(bad)], str(bad), "a config must be a mapping of sections")
    bad.write_text("train:\n  steps: 3\n  bacth_size: 4\n")
    fails(capsys, ["train", str(bad)], str(bad), "train.bacth_size", "did you mean 'train.batch_size'")
    bad.write_text(f"base: {tmp_path / 'missing.yaml'}\n")
    fails(capsys, ["train", str(bad)], "missing.yaml", "not found")
    fails(capsys, ["train", str(tmp_path)], "is a folder, not a YAML file")
    fails(capsys, ["train", str(tmp_path / "nope.yaml")], "nope.yaml", "not found")
    fails(capsys, ["train", "configs/toy_stage1.yaml", "optim.lr"], "override 'optim.lr' is not of the form")
    fails(capsys, ["train", "configs/toy_stage1.yaml", "train=3"], "train is a section")


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
    with pytest.raises(UsageError, match="--steps"):
        main(["--debug", *GEN, "--out", str(tmp_path), "--steps", "0"])
    with pytest.raises(ConfigError, match="optim.lr"):
        main(["train", "configs/toy_stage1.yaml", "optim.lr=0", "--debug"])
    import parauni.generate

    def bug(args):
        raise TypeError("a bug")

    monkeypatch.setattr(parauni.generate, "run_generate", bug)
    with pytest.raises(TypeError, match="a bug"):
        main([*GEN, "--out", str(tmp_path)])


def test_out_of_memory_names_the_fix():
    for err in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
                MemoryError()):
        msg = bad_input_message(err)
        assert msg.startswith("out of memory") and "lower the batch size" in msg and "resolution" in msg
    assert bad_input_message(RuntimeError("shapes do not match")) is None  # a bug: traceback
    assert bad_input_message(IsADirectoryError(21, "Is a directory", "x")) == "'x' is a folder, not a file"


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: seconds, not the CLI's own time
def test_subprocess_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "parauni", *GEN, "--out", str(tmp_path), "--steps", "0"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "parauni generate: error: argument --steps: expected an integer >= 1, got '0'" in proc.stderr


# ---- the config layer itself ------------------------------------------------------------------------------------

def test_overrides_parse_as_before():
    cfg = load_config(None, ["optim.lr=1e-3", "optim.betas=[0.9,0.95]", "train.mixed_precision='no'",
                             "model.conditioner={layers: [-1]}", "train.eval_limit=", "data.path=[a, b]"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.95) and cfg.train.mixed_precision == "no"
    assert cfg.model.conditioner == {"layers": [-1]} and cfg.train.eval_limit is None
    assert cfg.data.path == ["a", "b"]
    g = load_grpo_config(None, ["sampling.sde_window=null", "rewards.weights={red: 1.0, bright: 0.5}",
                                "optim.steps_per_epoch=null", "sampling.sde_window_range=[0, 5]"])
    assert g.sampling.sde_window is None and g.optim.steps_per_epoch is None
    assert g.rewards.weights == {"red": 1.0, "bright": 0.5}  # replaces the default rewards, not merged into them
    assert g.sampling.sde_window_range == [0, 5] and type(g.optim.betas) is tuple


def test_files_replace_mapping_defaults_and_bases_merge(tmp_path):
    g = load_grpo_config(ROOT / "configs" / "toy_grpo_redness.yaml")
    assert g.rewards.weights == {"redness": 1.0}
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  conditioner: {layers: [-1], fusion: sum}\noptim:\n  lr: 3.0e-4\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("base: ../base.yaml\nmodel:\n  conditioner: {layers: [-2]}\ntrain:\n  steps: 9\n")
    cfg = load_config(child, ["model.conditioner.fusion=concat"])
    assert cfg.model.conditioner == {"layers": [-2], "fusion": "concat"}
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 9


def test_save_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "toy_stage2.yaml", ["optim.lr=2e-3"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    g = load_grpo_config(ROOT / "configs" / "toy_grpo.yaml")
    save_config(g, tmp_path / "g.yaml")
    assert load_grpo_config(tmp_path / "g.yaml") == g


def test_unknown_keys_suggest_only_close_names():
    assert closest_name("max_steps", ["steps", "eval_steps", "save_every"]) == "steps"
    assert closest_name("trian", ["model", "data", "optim", "train"]) == "train"
    assert closest_name("groupsize", ["group_size", "steps"]) == "group_size"
    assert closest_name("learning_rate", ["lr", "eps", "betas"]) is None
    assert closest_name("foo", ["lr", "eps"]) is None
    with pytest.raises(UnknownKeyError) as info:
        load_config(None, ["train.max_steps=3"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)
    assert "eval_steps'?" not in str(info.value)


def test_check_resolution():
    assert check_resolution(32, 512) == 512
    with pytest.raises(ConfigError, match=r"data.resolution: this model needs a positive multiple of 32, got 48"):
        check_resolution(32, 48)
    with pytest.raises(ConfigError, match="got 0"):
        check_resolution(8, 0)


def test_broken_jsonl_names_the_file_and_line(tmp_path, capsys):
    """A broken GenEval metadata line is reported with its file and line (not 'line 1 column 9')."""
    from parauni.cli import main

    good = '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}'
    meta = tmp_path / "meta.jsonl"
    meta.write_text(f"{good}\n{good}\n{{\"tag\": broken\n")
    assert main(["eval", "geneval", "--model", "toy-all-layers", "--metadata", str(meta), "--out",
                 str(tmp_path / "out"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{meta}, line 3, column 9: not valid JSON" in err and "Traceback" not in err


def test_offline_clip_names_the_fix(tmp_path, monkeypatch):
    """Without the CLIP model in the cache and without network, the error says to pass --clip."""
    import huggingface_hub

    from parauni.errors import UsageError
    from parauni.eval.reconstruct import ClipImageEmbedder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: without this the Hub is tried (a long network timeout)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match="--clip PATH .* --clip none"):
        ClipImageEmbedder("openai/clip-vit-large-patch14")


@pytest.mark.parametrize("value, message", [
    ("{num_queries: 0}", "model.conditioner.num_queries: expected an integer >= 1, got 0"),
    ("{num_queries: -1}", "model.conditioner.num_queries: expected an integer >= 1, got -1"),
    ("{bogus_key: 3}", "model.conditioner.bogus_key: not a ParaUniConditioner argument; expected one of num_queries"),
    ("{layers: []}", "model.conditioner.layers: expected a list of one or more values"),
])
def test_conditioner_overrides_are_checked(value, message):
    """The conditioner section was passed to the constructor unchecked: 0 queries trained, -1 and [] raised
    tracebacks, an unknown key a TypeError."""
    from parauni.errors import ConfigError
    from parauni.rl.config import load_grpo_config
    from parauni.train.config import load_config

    for load in (lambda o: load_config("configs/toy_stage2.yaml", o), lambda o: load_grpo_config(None, o)):
        with pytest.raises(ConfigError) as err:
            load([f"model.conditioner={value}"])
        assert message in str(err.value)


def test_analyze_and_dpg_refuse_what_would_give_a_silent_wrong_result(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    base = ["analyze", "layers", "--model", "tiny", "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    fails(capsys, [*base, "--rewards", "toy_geneval=nan"], "--rewards", "finite number")
    fails(capsys, [*base, "--reward-options", '{"toy_geneval": {"bogus": 1}}'], "rewards.options.toy_geneval",
          "unexpected keyword argument 'bogus'", "takes: mode")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    fails(capsys, ["eval", "dpg", "--model", "tiny", "--prompts", str(empty), "--out", str(tmp_path / "d")],
          "holds no prompts")


def test_a_16_bit_greyscale_image_keeps_its_range(tmp_path):
    """PIL's convert("RGB") clips 16-bit values above 255, turning 99.7% of a 0..65535 gradient white."""
    import numpy as np
    from PIL import Image

    from parauni.utils.images import load_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (16, 64, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert abs(float(rgb.mean()) - 127.5) < 1.0 and (rgb == 255).mean() < 0.05


def test_prior_patch_sizes_that_do_not_fit_are_refused(capsys):
    """--patch 3 and --patch 64 ended in tracebacks from the transformer."""
    fails(capsys, ["toy", "pretrain-prior", "--patch", "3"], "model.patch", "must divide 8", "use one of 1, 2, 4")
    fails(capsys, ["toy", "pretrain-prior", "--patch", "64"], "model.patch", "must divide 8")
    fails(capsys, ["toy", "pretrain-prior", "--space", "pixel", "--patch", "3"], "must divide 32")


def test_a_full_disk_is_one_line_and_leaves_no_empty_image(tmp_path, capsys, monkeypatch):
    """A full disk during generate left a 0-byte PNG and a traceback; a checkpoint save printed torch's
    '[enforce fail at inline_container.cc]'. The disk is 'filled' by making PIL's PNG writer fail with ENOSPC
    after it has created its file, as a real full disk does."""
    import errno

    from PIL import Image

    real_save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        open(fp, "wb").close()  # the file exists, empty, when the write fails
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "gen"
    rc = main(["generate", "--model", "tiny", "--prompt", "a red circle", "--out", str(out), "--steps", "1",
               "--no-progress"])
    monkeypatch.setattr(Image.Image, "save", real_save)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "no space left on device at" in err and "rerun" in err
    # nothing half-written; a folder the command created and left empty is removed with its lock
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".png" or p.name.endswith(".partial")]
    from parauni.cli.bad_input import is_disk_full

    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                                      "writing file data/0: file write failed"))
    assert not is_disk_full(RuntimeError("shape mismatch"))


def test_a_known_model_name_shadowed_by_a_folder_is_refused(tmp_path, monkeypatch):
    """A folder named like a shipped model in the working directory: which one was meant cannot be told, so
    neither is loaded silently; ./NAME picks the folder."""
    from parauni.errors import UsageError
    from parauni.pipelines.loading import load_pipeline
    from parauni.toy.probe import load_probe_model

    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "toy-all-layers", "vlm"):
        (tmp_path / name).mkdir()
    with pytest.raises(UsageError, match=r"both a known model name and a path.*\./tiny"):
        load_pipeline("tiny")
    with pytest.raises(UsageError, match=r"\./toy-all-layers"):
        load_pipeline("toy-all-layers")
    with pytest.raises(UsageError, match=r"\./vlm"):
        load_probe_model("vlm")
    with pytest.raises(FileNotFoundError, match="not a saved ParaUniPipeline"):
        load_pipeline("./tiny")  # the folder, as asked (an empty one here)
