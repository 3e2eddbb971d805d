"""The command line: generate and the demo write what they say; errors exit 2 with a message."""

import torch
from PIL import Image

from parauni.cli import main


def test_generate_writes_images_and_grid(tmp_path, capsys):
    rc = main(["generate", "--model", "tiny", "--prompt", "a red circle", "--prompt", "two squares",
               "--out", str(tmp_path), "--steps", "2", "--seed", "3"])
    assert rc == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["000_a_red_circle.png", "001_two_squares.png", "grid.png"]
    assert Image.open(tmp_path / "000_a_red_circle.png").size == (16, 16)


def test_generate_image_to_image(tmp_path):
    """``--image``: the prompt is the instruction that goes with the image, and the image conditions the model:
    the written image is the pipeline's image-to-image output for that image and seed, at the model's own size,
    and neither the text-to-image one of the same prompt and seed nor that of another input image."""
    import numpy as np

    from parauni.pipelines.loading import load_pipeline

    instruction = "Keep the image as it is."
    Image.new("RGB", (24, 24), "green").save(tmp_path / "green.png")
    Image.new("RGB", (24, 24), "red").save(tmp_path / "red.png")
    args = ["generate", "--model", "tiny", "--prompt", instruction, "--steps", "2", "--seed", "5", "--no-progress"]
    assert main([*args, "--image", str(tmp_path / "green.png"), "--out", str(tmp_path / "green")]) == 0
    assert main([*args, "--image", str(tmp_path / "red.png"), "--out", str(tmp_path / "red")]) == 0
    assert main([*args, "--out", str(tmp_path / "text")]) == 0
    png = "000_keep_the_image_as_it_is.png"
    green, red, text = (np.asarray(Image.open(tmp_path / d / png), dtype=np.int16) for d in ("green", "red", "text"))
    assert (tmp_path / "green" / "grid.png").is_file() and green.shape == (16, 16, 3)
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(instruction, image=Image.open(tmp_path / "green.png").convert("RGB"), num_inference_steps=2,
                  guidance_scale=4.5, generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    assert np.abs(np.round(direct * 255).astype(np.int16) - green).max() <= 1  # PNG rounding only
    assert np.abs(green - text).mean() > 0.1  # the image reached the model (measured: 0.57 on the 0-255 scale)
    assert not np.array_equal(green, red)  # and its content, not only its presence (measured: 0.05)


def test_errors_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rc = main(["generate", "--model", "tiny", "--prompt", "x", "--image", str(tmp_path / "bad.png"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "corrupt" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--limit", "1", "--rl-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| toy-all-layers |" in out and "| toy-last-layer |" in out and "after RL (EMA)" in out
    assert "before / after the RL phase (first 1 prompt of each task x 1 image, guidance 1)" in out
    assert "first 10" not in out and "DiffusionNFT" in out
    for name in ("toy-all-layers", "toy-last-layer"):
        assert len((tmp_path / name / "eval" / "geneval" / "results.jsonl").read_text().splitlines()) == 6
    assert len((tmp_path / "rl_nft" / "metrics.jsonl").read_text().splitlines()) == 2
    for when in ("geneval_before", "geneval"):  # 6 prompts x 1 image, at guidance 1 only
        assert len((tmp_path / "rl_nft" / "eval" / when / "results.jsonl").read_text().splitlines()) == 6
    assert not list((tmp_path / "rl_nft" / "eval").glob("*cfg*"))
    html = (tmp_path / "report.html").read_text()
    assert "toy-all-layers" in html and "data:image/png;base64," in html and (tmp_path / "report.md").is_file()


def test_toy_eval_layout_and_resume(tmp_path, capsys):
    args = ["toy", "eval", "--model", "prior", "--limit", "2", "--images-per-prompt", "2", "--steps", "3",
            "--out", str(tmp_path)]
    assert main(args) == 0
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == [f"{i:05d}" for i in range(12)]
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    first = (tmp_path / "00003" / "samples" / "0001.png").stat().st_mtime_ns
    (tmp_path / "00005" / "samples" / "0000.png").unlink()  # an interrupted run
    assert main(args) == 0
    assert (tmp_path / "00003" / "samples" / "0001.png").stat().st_mtime_ns == first, "existing images are kept"
    assert (tmp_path / "00005" / "samples" / "0000.png").exists()
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 24


def test_every_command_takes_threads():
    import argparse

    from parauni.cli import build_parser
    from parauni.cli.parser import set_threads

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
            return
        for name, sub in subs[0].choices.items():
            yield from leaves(sub, (*path, name))

    found = list(leaves(build_parser()))
    assert len(found) > 10
    for path, parser in found:
        assert "--threads" in parser._option_string_actions, path
    before = torch.get_num_threads()
    args = build_parser().parse_args(["grpo", "configs/toy_grpo.yaml", "optim.lr=1e-3", "--threads", "1"])
    try:
        set_threads(args)
        assert torch.get_num_threads() == 1 and args.overrides[-1] == "train.threads=1"
    finally:
        torch.set_num_threads(before)
