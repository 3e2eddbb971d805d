"""Fast inference: the weights' dtype (``--dtype``), batched generation with per-image seeds, the cached
unconditional condition, and the generation benchmark's CPU smoke test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parauni.cli import main
from parauni.errors import UsageError
from parauni.pipelines.loading import load_pipeline, resolve_dtype
from parauni.pipelines.presets import build_tiny

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


# ---- dtype ---------------------------------------------------------------------------------------------------

def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", None) == torch.float32
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float64, "cuda") == torch.float64
    with pytest.raises(UsageError, match="auto, fp32, bf16, fp16"):
        resolve_dtype("float8", "cpu")


def test_load_pipeline_dtype():
    assert load_pipeline("tiny").transformer.dtype == torch.float32  # CPU: float32 by default
    pipe = load_pipeline("tiny", dtype="bf16")
    assert {p.dtype for m in (pipe.vlm, pipe.conditioner, pipe.transformer, pipe.vae)
            for p in m.parameters()} == {torch.bfloat16}
    out = pipe("a red circle", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def test_cli_dtype_option(tmp_path, capsys):
    args = ["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*args, "--out", str(tmp_path / "auto"), "--dtype", "auto"]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    png = "000_a_red_circle.png"
    same = [(tmp_path / d / png).read_bytes() for d in ("fp32", "auto")]
    assert same[0] == same[1]  # auto is float32 on a CPU: unchanged results
    fp32 = np.asarray(Image.open(tmp_path / "fp32" / png), dtype=np.int16)
    bf16 = np.asarray(Image.open(tmp_path / "bf16" / png), dtype=np.int16)
    assert fp32.shape == bf16.shape == (16, 16, 3)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per weight and activation), and the noise is drawn in
    # float32 from the same seed at either dtype: the same image up to rounding. Measured on the tiny model: mean
    # |difference| 1.9 and max 9 on the 0-255 scale, against a mean of 32 between two seeds of the same prompt.
    # The bounds (mean 4, max 32) leave 2-3x for other CPUs; bf16 weights that drew other noise fail them.
    diff = np.abs(fp32 - bf16)
    assert diff.any(), "--dtype bf16 gave the float32 image bit for bit: the weights were not cast"
    assert diff.mean() <= 4.0 and diff.max() <= 32, (diff.mean(), diff.max())
    assert main([*args, "--out", str(tmp_path / "seed1"), "--seed", "1"]) == 0
    other = np.asarray(Image.open(tmp_path / "seed1" / png), dtype=np.int16)
    assert np.abs(fp32 - other).mean() > 4 * diff.mean()  # another seed is far outside the bf16 tolerance
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--dtype", "float8"])
    assert "invalid choice: 'float8'" in capsys.readouterr().err
    for command in (["eval", "geneval"], ["eval", "dpg"], ["eval", "reconstruct"], ["analyze", "layers"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--dtype {auto,fp32,bf16,fp16}" in capsys.readouterr().out


# ---- batched generation --------------------------------------------------------------------------------------

def test_batch_does_not_change_the_images_pipeline():
    """One generator per image: the same images at batch 1 and batch 3, within float rounding (SANA's matmuls
    give slightly different last bits at another batch size; measured ~1e-6 on the toy model)."""
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    one = torch.cat([pipe(p, generator=[torch.Generator().manual_seed(i)], num_inference_steps=4,
                          output_type="pt").images for i, p in enumerate(PROMPTS)])
    three = pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(3)], num_inference_steps=4,
                 output_type="pt").images
    torch.testing.assert_close(three, one, atol=1e-5, rtol=0)
    # and not by accident: another seed gives another image
    other = pipe(PROMPTS[0], generator=[torch.Generator().manual_seed(7)], num_inference_steps=4,
                 output_type="pt").images
    assert (other - one[:1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one per image"):
        pipe(PROMPTS, generator=[torch.Generator()] * 2, num_inference_steps=1)


def test_generate_batch_size_does_not_change_the_images(tmp_path):
    base = ["generate", "--model", "tiny", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "3",
            "--images-per-prompt", "2", "--seed", "5", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "b1"), "--batch-size", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "b4"), "--batch-size", "3"]) == 0
    names = sorted(p.name for p in (tmp_path / "b1").glob("*.png"))
    assert names == ["000_a_red_circle_0.png", "000_a_red_circle_1.png", "001_two_blue_squares_0.png",
                     "001_two_blue_squares_1.png", "grid.png"]
    assert names == sorted(p.name for p in (tmp_path / "b4").glob("*.png"))
    arrays = {}
    for name in names[:-1]:
        a = np.asarray(Image.open(tmp_path / "b1" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "b4" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name  # float rounding may move a pixel by one level, no more
        arrays[name] = a
    assert np.abs(arrays[names[0]] - arrays[names[1]]).max() > 10  # each image its own seed


def test_generate_one_image_per_prompt_keeps_its_seeds(tmp_path):
    """With one image per prompt, image i is still seeded ``seed + i`` (as before batching)."""
    assert main(["generate", "--model", "tiny", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
                 "--seed", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    want = pipe(PROMPTS[1], num_inference_steps=2, generator=torch.Generator().manual_seed(4)).images[0]
    got = np.asarray(Image.open(tmp_path / "001_two_blue_squares.png"), dtype=np.int16)
    assert np.abs(got - np.asarray(want, dtype=np.int16)).max() <= 1


# ---- the cached unconditional condition ------------------------------------------------------------------------

def test_unconditional_condition_is_cached_and_exact():
    pipe = build_tiny()
    calls = []
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda prompts, *a, **k: calls.append(list(prompts)) or encode(prompts, *a, **k)
    pipe.set_progress_bar_config(disable=True)
    for _ in range(3):
        pipe(["a red circle", "two squares"], num_inference_steps=1, output_type="latent")
    assert calls.count([None]) == 1  # the unconditional prompt went through the VLM once
    with torch.no_grad():
        assert torch.equal(pipe.unconditional_condition(), encode([None]))


@pytest.mark.parametrize("change", ["optimizer", "load_state_dict", "data_copy", "to_dtype", "vlm", "clear"])
def test_unconditional_condition_follows_weight_changes(change):
    """Every way weights change recomputes it: never a stale condition."""
    pipe = build_tiny()
    before = pipe.unconditional_condition().clone()
    cond = pipe.conditioner
    if change == "optimizer":  # a training step
        opt = torch.optim.SGD(cond.parameters(), lr=0.1)
        cond.train()
        pipe.encode_prompt(["a red circle"]).square().mean().backward()
        opt.step()
        cond.eval()
    elif change == "load_state_dict":
        state = {k: v + 0.05 for k, v in cond.state_dict().items()}
        cond.load_state_dict(state)
    elif change == "data_copy":  # bypasses the version counters (PyTorch's .data): the cache must be cleared
        p = next(p for n, p in cond.lim.named_parameters() if n.endswith("weight"))
        p.data.copy_(p.data * 1.5)
        pipe.clear_unconditional_cache()
    elif change == "to_dtype":
        pipe.to(dtype=torch.float64)
        after = pipe.unconditional_condition()
        assert after.dtype == torch.float64
        torch.testing.assert_close(after.float(), before, atol=1e-5, rtol=1e-5)
        return
    elif change == "vlm":
        with torch.no_grad():
            pipe.vlm.get_input_embeddings().weight.mul_(2.0)
    elif change == "clear":
        pipe.clear_unconditional_cache()
        assert pipe._uncond_cache is None
        assert torch.equal(pipe.unconditional_condition(), before)
        return
    after = pipe.unconditional_condition()
    assert not torch.allclose(after, before)
    with torch.no_grad():
        assert torch.equal(after, pipe.encode_prompt([None]))


@pytest.mark.parametrize("part", ["conditioner", "vlm"])
def test_an_in_place_weight_change_invalidates_the_cache_without_reading_weights(part, monkeypatch):
    """The cache key is metadata (pointers, version counters, dtypes, devices, shapes): looking it up reads no
    weight (no norm, no device sync), and an in-place op on any weight makes the next call recompute."""
    pipe = build_tiny()
    before = pipe.unconditional_condition().clone()

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache key read the weights")

    monkeypatch.setattr(torch, "_foreach_norm", no_reading)
    assert pipe.unconditional_condition() is pipe._uncond_cache[1]  # a hit: the same tensor, nothing read
    weight = pipe.conditioner.lim.projector.weight if part == "conditioner" else pipe.vlm.get_input_embeddings().weight
    with torch.no_grad():
        weight.mul_(1.5)
    after = pipe.unconditional_condition()
    assert not torch.allclose(after, before)
    with torch.no_grad():
        assert torch.equal(after, pipe.encode_prompt([None]))


# ---- the benchmark ---------------------------------------------------------------------------------------------

def _seconds_per_call(batch: int, steps: int, repeats: int = 3) -> float:
    """The median wall time of one warm call of the tiny pipeline on one thread, measured here."""
    import statistics
    import time

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = load_pipeline("tiny")
        pipe.set_progress_bar_config(disable=True)

        def call():
            pipe(["a red circle"] * batch, num_inference_steps=steps, output_type="pt",
                 generator=[torch.Generator().manual_seed(i) for i in range(batch)])

        call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def test_bench_generate_smoke(tmp_path):
    import json
    import time

    out = tmp_path / "gen.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "bench_generate.py", "--size", "tiny", "--steps", "2", "--batch", "1,2",
                           "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(out)],
                          cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["info"]["dtype"] == "float32" and result["info"]["steps"] == 2
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["resolution"] == 16 for r in rows)
    # every timed call ran inside the process: together they took less than its wall time
    assert sum(r["seconds_per_call"] + r["condition_s"] for r in rows) < wall
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds_per_call"], rel=0.01, abs=1e-3)
        # the same calls timed here, within a factor of 10 either way (a shared CPU slows one or the other)
        ref = _seconds_per_call(r["batch"], steps=2)
        assert ref / 10 < r["seconds_per_call"] < ref * 10, (r, ref)


def test_gpu_suite_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")]).returncode == 0
