"""``parauni train`` at its benchmark's speed, with the same results: O(1) sample indexing, a DataLoader with
loader processes, no host sync per step, no attention mask, gradient checkpointing per module, torch.compile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from parauni.cli import main
from parauni.train.config import load_config
from parauni.train.data import build_source
from parauni.train.loader import MicroBatches, SampleLoader
from parauni.train.trainer import Trainer, checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false", "train.log_every=1", "optim.warmup_steps=2"]
# Losses and gradient norms of `folder_run` (stage II, grad_accum 2, one unreadable image) measured with the
# trainer before the DataLoader, uint8 uploads and the mask-free attention (per-sample randperm, inline loading)
BEFORE = [(2.460632801055908, 5.832695960998535), (2.344573736190796, 5.71696662902832),
          (1.9987778663635254, 1.8708763122558594), (2.372969150543213, 3.548489570617676)]


def folder_data(root: Path) -> Path:
    """Seven PNGs of different sizes with captions, and one unreadable image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (20 + i, 18, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"a picture number {i}")
    (root / "bad.png").write_bytes(b"nope")
    (root / "bad.txt").write_text("bad")
    return root


def folder_cfg(tmp_path: Path, name: str, *extra: str):
    data = folder_data(tmp_path / "data")
    return load_config(ROOT / "configs" / "toy_stage1.yaml", [
        *TINY, "train.stage=II", "train.steps=4", "train.grad_accum=2", "data.kind=folder", f"data.path={data}",
        f"train.output_dir={tmp_path / name}", *extra])


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


class _Sized:
    """A source of ``length`` samples (only the indexing is exercised)."""

    def __init__(self, length: int):
        self.length = length


def _loader(n: int, seed: int = 3) -> SampleLoader:
    cfg = load_config(None, [])
    return SampleLoader(_Sized(n), cfg.data, seed, global_batch=4, world=1, rank=0)


def test_epoch_order_is_the_per_sample_randperm():
    loader, n, seed = _loader(37), 37, 3
    for k in range(4 * n):  # four epochs
        epoch, pos = divmod(k, n)
        old = int(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))[pos])
        assert loader.index_of(k) == old, k


def test_ten_million_samples_index_in_constant_time():
    loader = _loader(10_000_000)
    loader.index_of(5_000_000)  # the epoch's permutation, once
    t0 = time.perf_counter()
    picked = [loader.index_of(5_000_000 + i * 997) for i in range(3000)]
    per_sample = (time.perf_counter() - t0) / 3000
    assert per_sample < 1e-3, f"{per_sample * 1e3:.3f} ms a sample"
    assert len(set(picked)) == len(picked) and all(0 <= i < 10_000_000 for i in picked)


def test_loader_processes_give_the_same_run_as_before(tmp_path):
    """data.num_workers=0 and 2 train to bit-identical weights and the losses measured before the change."""
    results = {}
    for workers in (0, 2):
        trainer = Trainer(folder_cfg(tmp_path, f"w{workers}", f"data.num_workers={workers}"), progress=False)
        result = trainer.run()
        assert result["skipped_images"] == 2  # the unreadable image, once per epoch at 4 samples a step
        assert trainer._batches is None  # the loader processes were stopped at the end
        got = [(r["loss"], r["grad_norm"]) for r in rows(tmp_path / f"w{workers}")]
        np.testing.assert_allclose(got, BEFORE, rtol=1e-5)
        results[workers] = (got, load_file(str(tmp_path / f"w{workers}" / "trainable.safetensors")))
    assert results[0][0] == results[2][0]
    for k, w in results[0][1].items():
        assert torch.equal(w, results[2][1][k]), k


# exact resume of stage I / II runs by default in test_train.py::test_resume_reaches_the_same_weights; this one
# adds loader processes (spawned workers)
@pytest.mark.slow
def test_loader_processes_resume_exactly(tmp_path):
    ref = Trainer(folder_cfg(tmp_path, "ref", "train.save_every=2"), progress=False)
    ref.run()
    cfg = folder_cfg(tmp_path, "cut", "train.save_every=2", "data.num_workers=2")
    Trainer(cfg, progress=False).run(stop_after=3)
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.step == 2
    resumed.run()
    assert resumed.loader.skipped == 2
    a, b = load_file(str(tmp_path / "cut" / "trainable.safetensors")), load_file(
        str(tmp_path / "ref" / "trainable.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_micro_batches_carry_uint8_pixels(tmp_path):
    cfg = folder_cfg(tmp_path, "x")
    loader = SampleLoader(build_source(cfg.data, 0), cfg.data, 0, global_batch=4, world=1, rank=0, grad_accum=2)
    batch = MicroBatches(loader, (4, 2, 2), 0.5, "uniform")[(1, 1)]
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (2, 3, 16, 16)
    assert batch["noise"].shape == (2, 4, 2, 2) and batch["sigma"].shape == (2,)
    float_images = torch.stack([s.image for s in loader.take(1, 1)])
    torch.testing.assert_close(batch["images"].float() / 127.5 - 1, float_images, rtol=0, atol=0)


def _nan_cache(tmp_path: Path, bad_step: int) -> Path:
    """A latent cache of 16 samples (four steps of 4: one epoch) whose samples of ``bad_step`` (1-based) are NaN."""
    from parauni.pipelines.loading import build_model
    from parauni.train.loader import cache_latents

    cfg = load_config(ROOT / "configs" / "toy_stage1.yaml", TINY)
    cache = tmp_path / "cache"
    cache_latents(build_source(cfg.data, 0), cfg.data, build_model(cfg.model).vae, cache, limit=16, batch_size=16,
                  progress=False)
    shard = cache / "latents-00000.safetensors"
    latents = load_file(str(shard))["latents"]
    loader = SampleLoader(_Sized(16), cfg.data, cfg.train.seed, global_batch=4, world=1, rank=0)
    for k in range(loader.first_index(bad_step - 1, 0), loader.first_index(bad_step, 0)):
        latents[loader.index_of(k)] = float("nan")
    save_file({"latents": latents}, str(shard))
    return cache


def test_a_nan_loss_stops_the_run_naming_its_step(tmp_path):
    """The loss stays on the device between checks; the check before the checkpoint of step 3 names step 2
    (log_every=4), and no checkpoint holds the broken weights."""
    cache = _nan_cache(tmp_path, bad_step=2)
    cfg = load_config(ROOT / "configs" / "toy_stage1.yaml", [
        *TINY, "train.steps=4", "train.log_every=4", "train.save_every=3", "data.kind=latents",
        f"data.path={cache}", f"train.output_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 2;"):
        trainer.run()
    assert trainer.step == 3 and not checkpoints(tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert trainer._batches is None  # the loader was closed on the way out


def test_no_host_sync_in_the_step(tmp_path):
    trainer = Trainer(load_config(ROOT / "configs" / "toy_stage1.yaml", [
        *TINY, "train.steps=3", f"train.output_dir={tmp_path / 'run'}"]), progress=False)
    row = trainer.train_step()
    assert isinstance(row["loss"], torch.Tensor) and isinstance(row["grad_norm"], torch.Tensor)
    trainer.train_step()
    values = trainer.check_steps()
    assert np.isfinite(values["loss"]) and not trainer._pending
    trainer.close_loader()


def test_the_transformer_without_a_mask_matches_the_all_ones_mask():
    from parauni.pipelines.loading import build_model

    pipe = build_model(load_config(None, ["model.source=tiny"]).model)
    t = pipe.transformer.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, t.config.in_channels, 4, 4, generator=g)
    cond = torch.randn(3, 7, t.config.caption_channels, generator=g)
    step = torch.tensor([100.0, 500.0, 900.0])
    with torch.no_grad():
        masked = t(x, encoder_hidden_states=cond, encoder_attention_mask=torch.ones(3, 7, dtype=torch.long),
                   timestep=step, return_dict=False)[0]
        free = t(x, encoder_hidden_states=cond, encoder_attention_mask=None, timestep=step, return_dict=False)[0]
    torch.testing.assert_close(free, masked, rtol=0, atol=1e-6)


def test_gradient_checkpointing_by_module(tmp_path):
    def run(name: str, setting: str) -> tuple[Trainer, list[float]]:
        trainer = Trainer(load_config(ROOT / "configs" / "toy_stage1.yaml", [
            *TINY, "train.steps=2", f"model.gradient_checkpointing={setting}",
            f"train.output_dir={tmp_path / name}"]), progress=False)
        trainer.run()
        return trainer, [r["loss"] for r in rows(tmp_path / name)]

    plain, ref = run("off", "false")
    listed, losses = run("list", "[connector,transformer]")
    assert listed.pipe.transformer.gradient_checkpointing  # named: checkpointed although frozen in stage I
    assert not listed.pipe.vlm.is_gradient_checkpointing
    np.testing.assert_allclose(losses, ref, rtol=1e-6)
    everything, losses = run("all", "true")
    assert everything.pipe.vlm.is_gradient_checkpointing
    assert not everything.pipe.transformer.gradient_checkpointing  # true: the transformer only when it trains
    np.testing.assert_allclose(losses, ref, rtol=1e-6)
    assert not plain.pipe.transformer.gradient_checkpointing


def test_bad_checkpointing_list_is_one_error_line(tmp_path, capsys):
    code = main(["train", str(ROOT / "configs" / "toy_stage1.yaml"), *TINY, "model.gradient_checkpointing=[vlm,lim]",
                 f"train.output_dir={tmp_path / 'run'}", "--no-progress"])
    assert code == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "model.gradient_checkpointing" in msg[0] and "vlm, connector, transformer" in msg[0]


@pytest.mark.slow  # inductor compiles the tiny transformer and connector: about two minutes on a CPU core
def test_compile_trains_like_eager(tmp_path):
    losses = {}
    for flag in ("false", "true"):
        main(["train", str(ROOT / "configs" / "toy_stage1.yaml"), *TINY, "train.steps=2", f"train.compile={flag}",
              f"train.output_dir={tmp_path / flag}", "--no-progress"])
        losses[flag] = [r["loss"] for r in rows(tmp_path / flag)]
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-4)
