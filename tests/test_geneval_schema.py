"""GenEval metadata and results are checked against GenEval's schema before anything runs; every error names the
file, the line and the field (``parauni.eval.geneval_schema``: ``validate_records``, ``load_metadata``,
``read_results``)."""

from __future__ import annotations

import json
import re

import pytest

from parauni.cli import main
from parauni.errors import UsageError
from parauni.eval import GENEVAL_SCORER_ENV
from parauni.eval import geneval_schema as schema

GOOD = {"tag": "position", "prompt": "a photo of a dog left of a cat",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]}


def write(tmp_path, *lines, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def problems(tmp_path, *lines, vocabulary=None) -> str:
    path = write(tmp_path, GOOD, *lines)
    with pytest.raises(UsageError) as err:
        schema.load_metadata(path, vocabulary or schema.geneval_vocabulary())
    return str(err.value)


@pytest.mark.parametrize("record, field, said", [
    ({**GOOD, "include": [{"class": "cat", "count": -3}]}, "include[0].count", "-3 is not a count"),
    ({**GOOD, "include": [{"class": "cat", "count": "two"}]}, "include[0].count", '"two" is not a count'),
    ({**GOOD, "include": [{"class": "cat"}]}, "include[0].count", "missing"),
    ({**GOOD, "include": [{"class": "unicorn", "count": 1}]}, "include[0].class", '"unicorn" is not one of the 80'),
    ({**GOOD, "include": [{"class": "cat", "count": 1, "color": "teal"}]}, "include[0].color",
     '"teal" is not one of the 10'),
    ({**GOOD, "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["next to", 0]}]},
     "include[1].position", 'relation "next to" is not one of left of, right of, above, below'),
    ({**GOOD, "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 1]}]},
     "include[1].position", "target 1 is not an earlier include entry"),
    ({**GOOD, "tag": "mystery"}, "tag", '"mystery" is not one of the 6'),
    ({**GOOD, "exclude": [{"class": "cat", "count": 0}]}, "exclude[0].count", "0 is not a count"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "missing"),
    ({k: v for k, v in GOOD.items() if k != "tag"}, "tag", "missing"),
    ({k: v for k, v in GOOD.items() if k != "include"}, "include", "missing or empty"),
    ([1, 2, 3], "(record)", "a GenEval record is a JSON object, got list"),
])
def test_each_schema_error_names_file_line_and_field(tmp_path, record, field, said):
    message = problems(tmp_path, record)
    assert f"{tmp_path / 'm.jsonl'}, line 2, field '{field}': {said}" in message
    assert "line 1" not in message  # the good record is not blamed


def test_all_errors_at_once_and_suggestions(tmp_path):
    message = problems(tmp_path, {**GOOD, "include": [{"class": "cta", "count": "1"}]}, "[1, 2, 3]")
    assert message.startswith("3 problem(s)")
    assert ("line 2, field 'include[0].class': \"cta\" is not one of the 80 known names (did you mean \"cat\"?)"
            in message)
    assert "line 2, field 'include[0].count'" in message and "line 3, field '(record)'" in message


def test_open_vocabularies_warn(tmp_path):
    path = write(tmp_path, GOOD, {**GOOD, "include": [{"class": "unicorn", "count": 2, "color": "teal"}]})
    rows = schema.metadata_lines(path)  # the schema alone: no vocabulary
    warnings = schema.validate_records(rows, str(path), schema.geneval_vocabulary(), open_vocabulary=True)
    assert [re.sub(r":.*", "", w.split("field ")[1]) for w in warnings] == ["'include[0].class'", "'include[0].color'"]
    assert all(w.startswith(f"{path}, line 2,") for w in warnings)
    # the schema is never open: a bad count stays an error
    bad = write(tmp_path, {**GOOD, "include": [{"class": "unicorn", "count": -1}]}, name="bad.jsonl")
    with pytest.raises(UsageError, match=r"bad.jsonl, line 1, field 'include\[0\].count'"):
        schema.load_metadata(bad, schema.geneval_vocabulary(), open_vocabulary=True)


def test_results_rows_need_their_fields(tmp_path):
    row = {"filename": "a.png", "tag": "colors", "prompt": "p", "correct": True, "reason": "", "metadata": "{}",
           "details": "{}"}
    path = write(tmp_path, row, {k: v for k, v in row.items() if k != "tag"}, {**row, "correct": "yes"},
                 name="results.jsonl")
    with pytest.raises(UsageError) as err:
        schema.read_results(path)
    message = str(err.value)
    assert f"{path}, line 2, field 'tag': missing" in message
    assert f"{path}, line 3, field 'correct': \"yes\" is not true/false" in message
    assert schema.read_results(write(tmp_path, row, name="ok.jsonl")) == [row]


def test_cli_refuses_bad_metadata_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(GENEVAL_SCORER_ENV, raising=False)
    meta = write(tmp_path, GOOD, {**GOOD, "include": [{"class": "cat", "count": "two"}]})
    out = tmp_path / "g"
    base = ["eval", "geneval", "--model", "prior", "--metadata", str(meta), "--out", str(out),
            "--images-per-prompt", "1", "--steps", "1"]
    assert main(base) == 2
    assert f"{meta}, line 2, field 'include[0].count': \"two\" is not a count" in capsys.readouterr().err
    assert not list(out.glob("*/samples/*.png"))
    # names GenEval cannot detect: an error for the native scorer, a warning for a user's official command
    meta = write(tmp_path, GOOD, {**GOOD, "include": [{"class": "unicorn", "count": 1}]}, name="u.jsonl")
    base[base.index("--metadata") + 1] = str(meta)
    assert main([*base, "--scorer", "native", "--detector", "x", "--clip", "y"]) == 2
    assert f"{meta}, line 2, field 'include[0].class'" in capsys.readouterr().err
    assert not list(out.glob("*/samples/*.png"))
    assert main([*base, "--scorer", "official"]) == 0
    text = capsys.readouterr().out
    assert f"warning: {meta}, line 2, field 'include[0].class'" in text and "evaluate_images.py" in text
