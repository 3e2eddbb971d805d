"""A non-editable install finds its configs, benchmark prompts and toy weights inside the installed package.

The project is copied (without .venv, runs, caches), installed with ``pip install --no-deps
--no-build-isolation --target DIR``, and checked in a fresh interpreter that sees only DIR and the venv's
site-packages (``python -S``: no ``.pth`` file, so not the editable install's ``src``), run from an empty folder.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "runs", "outputs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

CHECK = r"""
import json, sys
from pathlib import Path

target, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
import parauni
from parauni.cli import main
from parauni.eval import bundled
from parauni.pipelines.loading import load_pipeline
from parauni.registry import FAMILIES
from parauni.toy.rewards.alignment import DEFAULT_PATH as ALIGNMENT
from parauni.toy.reproduce import config_file
from parauni.train.config import load_config
from parauni.utils.configs import shipped_config, shipped_configs_dir

paths = {
    "package": Path(parauni.__file__),
    "configs": shipped_configs_dir(),
    "toy_stage2_lastlayer": config_file("toy_stage2_lastlayer.yaml"),
    "toy_grpo": config_file("toy_grpo.yaml"),
    "ddp": shipped_config("configs/accelerate/ddp.yaml"),
    "geneval": bundled.geneval_metadata_path(),
    "geneval_license": bundled.geneval_metadata_path().parent / "LICENSE",
    "object_names": bundled.geneval_object_names_path(),
    "dpg": bundled.dpg_prompts_path(),
    "dpg_notice": bundled.dpg_prompts_path().parent / "NOTICE",
    "toy_geneval": bundled.default_geneval_metadata(FAMILIES.get("toy")),
    "alignment": ALIGNMENT / "config.json",
}
# a bare shipped name, its `base:` chain (toy_stage2_lastlayer -> toy_stage2 -> toy_stage1) read from the copy
cfg = load_config("toy_stage2_lastlayer.yaml")
pipe = load_pipeline("toy-all-layers")  # the shipped stage-II weights
# the CLI: toy GenEval with its default (toy) prompts, the first prompt of each task
assert main(["eval", "geneval", "--model", "toy-all-layers", "--out", str(out), "--limit", "1",
             "--images-per-prompt", "1", "--steps", "2"]) == 0
print(json.dumps({"target": str(target), "paths": {k: str(v.resolve()) for k, v in paths.items()},
                  "exists": {k: v.exists() for k, v in paths.items()}, "stage": cfg.train.stage,
                  "layers": cfg.model.conditioner.get("layers"),
                  "lines": {k: len(paths[k].read_text().splitlines()) for k in ("geneval", "dpg", "toy_geneval")},
                  "pipe": type(pipe).__name__}))
"""


def _copy_project(dst: Path) -> None:
    def ignore(folder, names):
        return [n for n in names if n in SKIP or n.endswith(".egg-info")]

    for item in ROOT.iterdir():
        if item.name in SKIP or item.name.endswith(".egg-info"):
            continue
        if item.is_symlink():
            os.symlink(os.readlink(item), dst / item.name)
        elif item.is_dir():
            shutil.copytree(item, dst / item.name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(item, dst / item.name)


def test_non_editable_install_uses_its_own_files(tmp_path):
    """About 10 s of CPU on one thread (not `slow`): pip (3 s), then one interpreter that imports torch and
    transformers, loads the toy model and runs 6 two-step images."""
    pytest.importorskip("setuptools", reason="--no-build-isolation builds with the venv's own setuptools")
    src, target, work = tmp_path / "src_copy", tmp_path / "target", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    _copy_project(src)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile",
                          "--quiet", "--target", str(target), str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), site]), "OMP_NUM_THREADS": "1"}

    out = work / "g"
    run = subprocess.run([sys.executable, "-S", "-c", CHECK, str(target), str(out)], cwd=work, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    for name, path in info["paths"].items():
        assert info["exists"][name], name
        assert Path(path).is_relative_to(target.resolve()), f"{name} resolved outside the install: {path}"
        assert not Path(path).is_relative_to(ROOT), f"{name} resolved into the source tree: {path}"
    assert info["lines"] == {"geneval": 553, "dpg": 1065, "toy_geneval": 300}
    assert info["stage"] == "II" and info["layers"] == [-1] and info["pipe"] == "ParaUniPipeline"
    assert f"prompts: {target.resolve() / 'parauni' / 'toy' / 'data'}" in run.stdout  # the CLI's default prompts
    assert json.loads((out / "summary.json").read_text())["total_images"] == 6


def test_shipped_config_names_resolve_from_any_folder(tmp_path, monkeypatch):
    """A config argument that is not a file names a shipped config; a local file of that name wins."""
    from parauni.toy.reproduce import config_file
    from parauni.train.config import load_config
    from parauni.utils.configs import resolve_config, shipped_config_names, shipped_configs_dir

    shipped = shipped_configs_dir()
    assert (ROOT / "configs").resolve() == shipped.resolve()  # the repository's configs is the package's
    assert {"toy_stage1.yaml", "toy_grpo.yaml", "accelerate/ddp.yaml"} <= set(shipped_config_names())
    assert config_file("toy_stage2.yaml") == shipped / "toy_stage2.yaml"
    monkeypatch.chdir(tmp_path)
    assert resolve_config("toy_stage1.yaml") == shipped / "toy_stage1.yaml"
    assert resolve_config("configs/accelerate/ddp.yaml") == shipped / "accelerate" / "ddp.yaml"
    cfg = load_config("toy_stage2_lastlayer.yaml", ["train.steps=7"])  # base: toy_stage2 -> toy_stage1
    assert cfg.train.stage == "II" and cfg.train.steps == 7 and cfg.model.conditioner["layers"] == [-1]
    (tmp_path / "toy_stage1.yaml").write_text("base: toy_stage2.yaml\ntrain: {steps: 3}\n")
    (tmp_path / "toy_stage2.yaml").write_text("train: {stage: II}\n")
    local = load_config("toy_stage1.yaml")
    assert local.train.steps == 3 and local.train.stage == "II"
    with pytest.raises(FileNotFoundError, match=r"toy_stage9\.yaml.*not a shipped config.*toy_stage1\.yaml"):
        load_config("toy_stage9.yaml")
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        config_file("../pyproject.toml")
