"""The stage I / II recipe: configs, data layouts, checkpoints, exact resume, export, two processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from parauni.errors import ConfigError
from parauni.train.config import load_config, trainable_parts
from parauni.train.data import FolderSource, JsonSource, build_source
from parauni.train.export import export
from parauni.train.loader import SampleLoader
from parauni.train.optim import warmup_cosine
from parauni.train.trainer import Trainer, checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false", "train.log_every=1", "optim.warmup_steps=2"]


def tiny_cfg(tmp_path, *extra, name="run"):
    return load_config(ROOT / "configs" / "toy_stage1.yaml", [*TINY, f"train.output_dir={tmp_path / name}", *extra])


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "trainable.safetensors"))


STAGE3 = ("grpo", "nft", "awm")  # stage III configs: tests/test_grpo.py, tests/test_rl_nft.py, tests/test_rl_awm.py


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").glob("*.yaml")
                                        if not any(k in p.name for k in STAGE3)
                                         and not p.name.startswith(("toy_pretrain_", "toy_train_"))),
                         ids=lambda p: p.name)  # (toy pre-training configs: tests/toy/test_pretrain_configs.py)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.stage in ("I", "II")
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.05 and cfg.optim.max_grad_norm == 1.0
    if "sana" in path.name:  # the real presets carry the paper's stage I/II numbers (supplementary Tab. 1)
        stage1 = cfg.train.stage == "I"
        assert cfg.optim.lr == (1e-4 if stage1 else 1e-5)
        assert cfg.train.steps == (100_000 if stage1 else 10_000)
        assert cfg.optim.warmup_steps == (1000 if stage1 else 100)
        assert cfg.train.batch_size == 512


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(KeyError, match="optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1e-3"])
    with pytest.raises(KeyError, match="did you mean 'train'"):
        load_config(None, ["trian.steps=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: ../configs_missing.yaml\n")
    with pytest.raises(FileNotFoundError):
        load_config(bad)
    with pytest.raises(ValueError, match="train.stage"):
        load_config(None, ["train.stage=III"])


def test_overrides_read_numbers_like_yaml_and_python():
    cfg = load_config(None, ["optim.lr=1e-3", "train.steps=7", "model.conditioner={layers: [-1]}"])
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 7 and cfg.model.conditioner == {"layers": [-1]}


def test_stage_sets_and_schedule():
    assert trainable_parts(load_config(None, ["train.stage=I"])) == ["queries", "lim"]
    assert trainable_parts(load_config(None, ["train.stage=II"])) == ["queries", "lim", "transformer"]
    f = warmup_cosine(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


def test_stage_one_freezes_the_transformer_and_decay_skips_vectors(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "train.steps=2"), progress=False)
    before = {n: p.clone() for n, p in trainer.pipe.transformer.named_parameters()}
    trainer.run()
    saved = weights(tmp_path / "run")
    assert saved and all(k.startswith("conditioner.") for k in saved)
    for n, p in trainer.pipe.transformer.named_parameters():
        assert torch.equal(p, before[n]), n
    decay, no_decay = trainer.opt.optimizer.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)


def test_resume_reaches_the_same_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=6", "train.save_every=2", "train.stage=II", name="cut")
    ref = Trainer(tiny_cfg(tmp_path, "train.steps=6", "train.save_every=2", "train.stage=II", name="ref"),
                  progress=False)
    ref.run()
    Trainer(cfg, progress=False).run(stop_after=3)  # interrupted after step 3: last checkpoint is step 2
    cut = tmp_path / "cut"
    assert [p.name for p in checkpoints(cut)] == ["checkpoint-0000002"]
    (cut / "checkpoint-0000004.tmp").mkdir()  # a half-written checkpoint is ignored
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.step == 2
    resumed.run()
    a, b = weights(cut), weights(tmp_path / "ref")
    assert any(k.startswith("transformer.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert len(checkpoints(cut)) == 2  # keep_last


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(tiny_cfg(tmp_path, "train.steps=2"), resume=True, progress=False)
    fresh = Trainer(tiny_cfg(tmp_path, "train.steps=2", "train.save_every=1"), resume="auto", progress=False)
    assert fresh.step == 0  # "auto": no checkpoint yet, a fresh start
    fresh.run(stop_after=1)
    again = Trainer(tiny_cfg(tmp_path, "train.steps=2", "train.save_every=1"), resume="auto", progress=False)
    assert again.step == 1  # "auto" with a checkpoint: resumed


def test_export_writes_a_pipeline(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=2", "train.save_every=1"), progress=False).run()
    out = export(tmp_path / "run" / "checkpoint-0000002", tmp_path / "pipe")
    from parauni.pipelines import ParaUniPipeline

    pipe = ParaUniPipeline.from_pretrained(out)
    trained = weights(tmp_path / "run")
    torch.testing.assert_close(pipe.conditioner.queries.detach(), trained["conditioner.queries"])
    img = pipe("a red circle", num_inference_steps=2, height=16, width=16, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 16, 16, 3)


def _write_png(path: Path, color, size=(20, 12)) -> None:
    Image.new("RGB", size, color).save(path)


def test_json_folder_and_webdataset_layouts(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    records = []
    for i in range(3):
        _write_png(root / f"{i}.png", (40 * i, 0, 0))
        (root / f"{i}.json").write_text(json.dumps({"prompt": f"caption {i}"}))
        (root / f"{i}.txt").write_text(f"caption {i}\n")
        records.append({"image": f"{i}.png", "annotation": f"{i}.json"})
    (root / "broken.png").write_bytes(b"not an image")
    (root / "broken.txt").write_text("broken")
    records.append({"image": "broken.png", "annotation": "0.json"})
    (root / "train.json").write_text(json.dumps(records))
    with pytest.raises(KeyError, match="caption key 'caption'"):
        JsonSource(str(root / "train.json"))
    src = JsonSource(str(root / "train.json"), caption_key="prompt")
    assert src.length == 4 and src.caption(2) == "caption 2"
    folder = FolderSource(str(root))
    assert folder.length == 4
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            for ext, data in (("png", (root / f"{i}.png").read_bytes()), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cfg = load_config(None, ["data.kind=webdataset", f"data.path={shard}", "data.resolution=8"])
    loader = SampleLoader(build_source(cfg.data, 0), cfg.data, 0, global_batch=2, world=1, rank=0)
    batch = loader.take(1, 0)  # samples 2, 3: the stream wraps round to s0
    assert [s.caption for s in batch] == ["caption 2", "caption 0"]
    assert batch[0].image.shape == (3, 8, 8) and float(batch[0].image.max()) <= 1.0
    cfg = load_config(None, ["data.kind=json", f"data.path={root / 'train.json'}", "data.caption_key=prompt",
                             "data.resolution=8"])
    loader = SampleLoader(build_source(cfg.data, 0), cfg.data, 0, global_batch=4, world=1, rank=0)
    batch = loader.take(0, 0)  # one epoch: the broken record is skipped, counted and replaced
    assert loader.skipped == 1 and len(batch) == 4


def test_empty_data_fails_before_training(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        Trainer(tiny_cfg(tmp_path, "data.kind=json", f"data.path={tmp_path / 'empty.json'}"), progress=False)
    with pytest.raises(FileNotFoundError):
        Trainer(tiny_cfg(tmp_path, "data.kind=folder", f"data.path={tmp_path / 'nowhere'}"), progress=False)


def test_cache_latents_then_train(tmp_path):
    from parauni.pipelines.loading import build_model
    from parauni.train.loader import cache_latents

    cfg = tiny_cfg(tmp_path, "train.steps=2")
    pipe = build_model(cfg.model)
    info = cache_latents(build_source(cfg.data, 0), cfg.data, pipe.vae, tmp_path / "cache", limit=10,
                         batch_size=4, shard_size=4, progress=False)
    assert info == {"samples": 10, "skipped": 0, "shards": 3, "out_dir": str(tmp_path / "cache")}
    result = Trainer(tiny_cfg(tmp_path, "train.steps=2", "data.kind=latents", f"data.path={tmp_path / 'cache'}"),
                     progress=False).run()
    assert result["step"] == 2 and np.isfinite(result["loss"])
    # a cache made at another resolution, or for another VAE, is refused before training (it trained, or failed with
    # "expected ... 4 channels, but got 8")
    res = cfg.data.resolution
    with pytest.raises(ConfigError, match=f"made at {res} px but this run asks {2 * res}"):
        Trainer(tiny_cfg(tmp_path, "train.steps=2", "data.kind=latents", f"data.path={tmp_path / 'cache'}",
                         f"data.resolution={2 * res}", "train.output_dir=" + str(tmp_path / "r2")), progress=False)
    from safetensors.torch import save_file

    for shard in (tmp_path / "cache").glob("latents-*.safetensors"):  # as another VAE's (twice the channels)
        lat = load_file(shard)["latents"]
        save_file({"latents": torch.cat([lat, lat], dim=1).contiguous()}, shard)
    with pytest.raises(ConfigError, match="another VAE"):
        Trainer(tiny_cfg(tmp_path, "train.steps=2", "data.kind=latents", f"data.path={tmp_path / 'cache'}",
                         "train.output_dir=" + str(tmp_path / "r3")), progress=False)


def test_two_processes_match_one(tmp_path, free_port):
    """torchrun with 2 CPU processes (gloo) and the same global batch as a 1-process run."""
    args = [*TINY, "train.steps=3", "train.save_every=3", "train.stage=II"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "parauni", "train", str(ROOT / "configs/toy_stage1.yaml"),
                          *args, f"train.output_dir={tmp_path / 'two'}", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    ckpt = tmp_path / "two" / "checkpoint-0000003"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    Trainer(load_config(ROOT / "configs/toy_stage1.yaml", [*args, f"train.output_dir={tmp_path / 'one'}"]),
            progress=False).run()
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert set(a) == set(b)
    for k in a:  # reduction order differs between 1 and 2 processes: float32 round-off only
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)
