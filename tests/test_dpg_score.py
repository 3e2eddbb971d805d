"""DPG-Bench scoring (ELLA ``dpg_bench/compute_dpg_bench.py``): questions and their dependency graph from
``dpg_bench.csv``, 2x2 grids split into 4 images, parents gate children, per-item and per-category means.

The dependency / aggregation logic is pure and takes ``answer(image, question) -> bool``: the hand-checked tests
pass a plain Python function; the plumbing test runs a real (tiny, random) transformers VQA model."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from parauni.cli import main
from parauni.eval.dpg_score import Question, aggregate, load_questions, parse_yes, score_image, score_item, split_grid

HEADER = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
          "tuple", "question_natural_language"]
# item "a": 1 <- 2 <- 3 (a chain) and 4 <- 1; item "b": two roots and a child of both
ROWS = [
    ("a", "1", "0", "entity - whole (cat)", "Is there a cat?"),
    ("a", "2", "1", "attribute - color (cat, black)", "Is the cat black?"),
    ("a", "3", "2", "attribute - texture (cat, fluffy)", "Is the black cat fluffy?"),
    ("a", "4", "1", "relation - spatial (cat, sofa, on)", "Is the cat on a sofa?"),
    ("b", "1", "0", "entity - whole (dog)", "Is there a dog?"),
    ("b", "2", "0", "entity - whole (ball)", "Is there a ball?"),
    ("b", "3", "1,2", "relation - spatial (dog, ball, next to)", "Is the dog next to the ball?"),
]


def write_csv(path, rows=ROWS):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for item, qid, dep, tup, q in rows:
            w.writerow([item, "prompt", "kw", qid, dep, tup.split(" - ")[0], "d", tup, q])
    return path


def test_questions_keep_every_row_and_the_graph(tmp_path):
    qs = load_questions(write_csv(tmp_path / "q.csv"))
    # the first data row is kept (the reference skips it, compute_dpg_bench.py l.72-74)
    assert [q.qid for q in qs["a"]] == [1, 2, 3, 4] and qs["a"][0].text == "Is there a cat?"
    assert qs["b"][2].parents == (1, 2) and qs["a"][0].parents == (0,)
    assert qs["a"][1].category == "attribute - color" and qs["a"][1].l1 == "attribute"
    bad = write_csv(tmp_path / "bad.csv", [*ROWS, ("c", "1", "5", "entity - whole (x)", "Is there x?")])
    with pytest.raises(ValueError, match="depends on \\[5\\]"):
        load_questions(bad)


def answers(table):
    """answer(image, question) from {(image name, question): yes} -- unlisted questions are answered yes."""
    return lambda image, question: table.get((image, question), True)


def test_dependency_rule_by_hand(tmp_path):
    qs = load_questions(write_csv(tmp_path / "q.csv"))["a"]
    # all yes
    assert score_image("A", qs, answers({})) == (1.0, {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0})
    # no cat: every other question depends on it, directly or through its parent -> all 0
    s, raw = score_image("B", qs, answers({("B", "Is there a cat?"): False}))
    assert s == 0.0 and raw == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    # the cat is not black: 3 (child of 2) is zeroed, 4 (child of 1) still counts -> (1 + 0 + 0 + 1) / 4
    s, raw = score_image("C", qs, answers({("C", "Is the cat black?"): False}))
    assert s == 0.5 and raw == {1: 1.0, 2: 0.0, 3: 1.0, 4: 1.0}
    # a child answered no does not touch its parent
    assert score_image("D", qs, answers({("D", "Is the black cat fluffy?"): False}))[0] == 0.75
    # two parents: either one answered no zeroes the child
    qb = load_questions(write_csv(tmp_path / "q.csv"))["b"]
    assert score_image("E", qb, answers({("E", "Is there a ball?"): False}))[0] == pytest.approx(1 / 3)
    # an item: the mean of its images; categories read the last image's raw answers
    res = score_item(["A", "B", "C", "D"], qs, answers({("B", "Is there a cat?"): False,
                                                        ("C", "Is the cat black?"): False,
                                                        ("D", "Is the black cat fluffy?"): False}))
    assert res["image_scores"] == [1.0, 0.0, 0.5, 0.75] and res["score"] == pytest.approx(2.25 / 4)
    assert res["last_image_answers"] == {"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}


def test_aggregate_by_hand(tmp_path):
    questions = load_questions(write_csv(tmp_path / "q.csv"))
    results = {"a": {"score": 0.5, "last_image_answers": {"1": 1.0, "2": 0.0, "3": 1.0, "4": 1.0}},
               "b": {"score": 1.0, "last_image_answers": {"1": 1.0, "2": 0.0, "3": 0.0}}}
    s = aggregate(results, questions)
    assert s["score"] == pytest.approx(75.0) and s["items"] == 2 and s["questions"] == 7
    # L2: entity - whole = a1, b1, b2 = (1 + 1 + 0) / 3; attribute - color = a2 = 0; relation - spatial = a4, b3
    assert s["l2"] == pytest.approx({"entity - whole": 200 / 3, "attribute - color": 0.0,
                                     "attribute - texture": 100.0, "relation - spatial": 50.0})
    assert s["l1"] == pytest.approx({"attribute": 50.0, "entity": 200 / 3, "relation": 50.0})


def test_split_grid_is_row_major():
    cells = [np.full((6, 8, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    grid = np.concatenate([np.concatenate(cells[:2], 1), np.concatenate(cells[2:], 1)], 0)
    parts = split_grid(Image.fromarray(grid))
    assert [p.size for p in parts] == [(8, 6)] * 4
    assert [int(np.asarray(p)[0, 0, 0]) for p in parts] == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="even"):
        split_grid(Image.new("RGB", (7, 8)))


def test_parse_yes():
    assert parse_yes("yes") and parse_yes(" Yes.") and parse_yes("YES, there is")
    assert not parse_yes("no") and not parse_yes("") and not parse_yes("yesterday") and not parse_yes("maybe yes")


def tiny_blip_vqa(folder, favour: str | None = None):
    """A BlipForQuestionAnswering with random weights and its processor (a word-level BERT vocabulary);
    ``favour``: a word whose output bias is raised so that the model answers it to every question."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "yes", "no", "is", "there", "a", "the", "?"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]")  # as BLIP's own
    cfg = BlipConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=37, max_position_embeddings=64,
                                      bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3),
                     vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=37, image_size=32, patch_size=8))
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(cfg).eval()
    if favour is not None:
        with torch.no_grad():
            model.text_decoder.cls.predictions.bias[vocab.index(favour)] = 1e4
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(
        folder)
    return folder


def test_cli_generates_and_scores_with_a_transformers_vqa_model(tmp_path, capsys):
    vqa = tiny_blip_vqa(tmp_path / "vqa")
    (tmp_path / "p.jsonl").write_text('{"item_id": "a", "prompt": "a black cat on a sofa"}\n'
                                      '{"item_id": "b", "prompt": "a dog next to a ball"}\n')
    csv_path = write_csv(tmp_path / "dpg_bench.csv")
    out = tmp_path / "out"
    args = ["eval", "dpg", "--model", "tiny", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(out),
            "--steps", "1", "--score", "--questions", str(csv_path), "--vqa", str(vqa)]
    assert main(args) == 0
    summary = json.loads((out / "dpg_summary.json").read_text())
    assert summary["items"] == 2 and summary["images_per_item"] == 4 and summary["questions"] == 7
    assert 0.0 <= summary["score"] <= 100.0 and set(summary["l1"]) == {"entity", "attribute", "relation"}
    assert summary["vqa"] == str(vqa) and "tiny" in summary["model"]
    lines = [json.loads(x) for x in (out / "dpg_scores.jsonl").read_text().splitlines()]
    assert lines[0]["identity"]["vqa"] == str(vqa) and [r["item_id"] for r in lines[1:]] == ["a", "b"]
    assert all(len(r["image_scores"]) == 4 for r in lines[1:])
    assert "DPG-Bench" in capsys.readouterr().out
    # scoring the folder again (no --model) keeps the finished items
    before = (out / "dpg_scores.jsonl").read_text()
    assert main(["eval", "dpg", "--out", str(out), "--score", "--questions", str(csv_path), "--vqa", str(vqa)]) == 0
    assert (out / "dpg_scores.jsonl").read_text() == before
    assert json.loads((out / "dpg_summary.json").read_text())["score"] == summary["score"]


def test_vqa_answers_flow_into_the_score(tmp_path):
    """The decoded answer decides: a VQA model that always says "yes" scores 100, "no" scores 0."""
    from parauni.eval.dpg_score import load_vqa, score_folder

    questions = load_questions(write_csv(tmp_path / "q.csv"))
    grids = tmp_path / "grids"
    grids.mkdir()
    for item in ("a", "b"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            grids / f"{item}.png")
    for word, expect in (("yes", 100.0), ("no", 0.0)):
        answer = load_vqa(str(tiny_blip_vqa(tmp_path / f"vqa_{word}", favour=word)))
        s = score_folder(grids, questions, answer, identity={"vqa": word})
        assert s["score"] == expect and set(s["l1"].values()) == {expect} and s["items"] == 2


def tiny_chat_vlm(folder):
    """A LlavaForConditionalGeneration with random weights, the project's small BPE tokenizer and a chat template."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from parauni.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                                         projection_dim=16),
                      text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256),
                      image_token_index=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                      crop_size={"height": 28, "width": 28}),
                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", image_token="<IMG_CONTEXT>",
                   chat_template=template, num_additional_image_tokens=1).save_pretrained(folder)
    return folder


def test_chat_template_vlm_answers(tmp_path):
    from parauni.eval.dpg_score import load_vqa

    answer = load_vqa(str(tiny_chat_vlm(tmp_path / "vlm")), max_new_tokens=3)
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    first = answer(image, "Is there a circle?")
    assert isinstance(first, bool) and answer(image, "Is there a circle?") == first  # greedy: deterministic


def test_score_needs_its_inputs(tmp_path, capsys):
    assert main(["eval", "dpg", "--out", str(tmp_path), "--score"]) == 2
    assert "--questions" in capsys.readouterr().err
    assert main(["eval", "dpg", "--out", str(tmp_path)]) == 2
    assert "--model is required" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "zzz.png")
    assert main(["eval", "dpg", "--out", str(tmp_path), "--score", "--questions",
                 str(write_csv(tmp_path / "q.csv")), "--vqa", str(tmp_path / "novqa")]) == 2
    assert "holds no <item_id>.png grid whose item_id is in the question file" in capsys.readouterr().err


def test_question_dataclass_categories():
    q = Question(1, "Is there a cat?", "entity - whole (cat)", (0,))
    assert (q.category, q.l1) == ("entity - whole", "entity")
