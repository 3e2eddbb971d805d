"""What the command line shows and says: step progress, the toy tokenizer's handling of unexpected text,
help texts that name only options that exist."""

from __future__ import annotations

import argparse
import re
import warnings

import pytest

from parauni.cli import build_parser, main


def test_generate_shows_denoising_steps(tmp_path, capsys):
    args = ["generate", "--model", "tiny", "--prompt", "a red circle", "--out", str(tmp_path), "--steps", "3",
            "--threads", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "denoising" in err and "/3 [" in err and "generating" in err  # the 3 steps of the image, and prompts
    assert main([*args, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "denoising" not in err and "generating" not in err


def test_analyze_layers_shows_denoising_steps(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    args = ["analyze", "layers", "--model", "tiny", "--prompts", str(tmp_path / "p.txt"), "--out",
            str(tmp_path / "o"), "--steps", "2", "--images-per-prompt", "1", "--mode", "drop", "--rewards",
            "toy_quality", "--threads", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "layer response" in err and "denoising" in err and "/2 [" in err
    assert main([*args, "--no-progress"]) == 0
    assert "denoising" not in capsys.readouterr().err


def test_toy_tokenizer_lowercases_and_warns_once(tmp_path):
    from parauni.pipelines.loading import load_pipeline

    pipe = load_pipeline("toy-all-layers")
    tok = pipe.tokenizer
    assert tok("A RED CIRCLE")["input_ids"] == tok("a red circle")["input_ids"]
    # the capitalised templates the toy models were trained on keep their tokens
    assert tok.convert_ids_to_tokens(tok("Generate an image: ")["input_ids"])[0] != "g"
    assert len(tok("Keep the image as it is.")["input_ids"]) == 7
    up, low = tmp_path / "up", tmp_path / "low"
    for prompt, out in (("A RED CIRCLE", up), ("a red circle", low)):
        assert main(["generate", "--model", "toy-all-layers", "--prompt", prompt, "--out", str(out), "--steps", "2",
                     "--no-progress", "--threads", "1"]) == 0
    assert (up / "000_a_red_circle.png").read_bytes() == (low / "000_a_red_circle.png").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(["a 🦄 unicorn", "a red unicorn"], num_inference_steps=1, output_type="np")
        pipe("a red unicorn", num_inference_steps=1, output_type="np")
    messages = [str(w.message) for w in caught if "toy tokenizer" in str(w.message)]
    assert len(messages) == 1 and "'🦄'" in messages[0] and "'unicorn'" in messages[0]
    with pytest.warns(UserWarning, match="'zebra'"):
        tok("two zebras and a zebra")


def test_known_words_cover_the_toy_corpus():
    from parauni.toy.tokenizer import toy_corpus, unknown_words

    special = ("<|im_start|>", "<|im_end|>")
    assert [w for line in toy_corpus(n=200) for w in unknown_words(line, special)] == []


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("command", [("toy", "reproduce"), ("toy", "eval"), ("eval", "geneval"), ("eval", "dpg"),
                                     ("generate",), ("analyze", "layers")], ids=" ".join)
def test_help_names_only_real_options(command, capsys):
    parser = _subparser(build_parser(), *command)
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text))
    real = {s for a in parser._actions for s in a.option_strings}
    official_scorer = {"--outfile", "--model-path"}  # GenEval's evaluate_images.py, quoted by eval geneval
    assert named - real - official_scorer == set(), f"{' '.join(command)} --help names options it does not have"
