"""``parauni toy probe-layers``: per-layer linear probes of the toy VLM's query states, with their floors (chance and
a shuffled-label control), written as a table and a heat map and shown by ``parauni report``."""

from __future__ import annotations

import json

import pytest
import torch

from parauni.analysis.probe import probe_accuracy
from parauni.cli import main
from parauni.report.build import build_report
from parauni.toy.probe import probe_tasks
from parauni.toy.worlds import get_world


@pytest.fixture(scope="module")
def shipped_probe(tmp_path_factory):
    """The probe of the shipped 4-layer toy VLM on its own (v1) vocabulary, into a run folder."""
    out = tmp_path_factory.mktemp("run")
    assert main(["toy", "probe-layers", "--vlm", "vlm", "--world", "v1", "--n", "200", "--out", str(out)]) == 0
    return out, json.loads((out / "layer_probe.json").read_text())


def test_probe_recovers_a_linear_rule_and_not_noise():
    """On synthetic features: a label that is a linear function of them is read perfectly, random labels are not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = (x[:, :4] @ torch.randn(4, 4, generator=g)).argmax(1)  # 4 classes, a linear rule of 4 of the 16 features
    assert probe_accuracy(x[:300], y[:300], x[300:], y[300:], 4) >= 0.9
    noise = torch.randint(0, 4, (400,), generator=g)
    assert probe_accuracy(x[:300], noise[:300], x[300:], noise[300:], 4) < 0.4  # chance 0.25


def test_tasks_label_what_the_prompt_names():
    w = get_world("v2")
    tasks = probe_tasks("v2", n=100, seed=3)
    assert set(tasks) == {"colour", "shape", "count", "relation"}
    for name, (prompts, labels) in tasks.items():
        assert len(prompts) == len(set(prompts)) == len(labels) == 100, name
    for p, c in zip(*tasks["colour"], strict=True):
        assert c in w.colors and p.split()[3] in ("a", "an") and p.split()[4] == c  # "a photo of a red ..."
    for p, r in zip(*tasks["relation"], strict=True):
        assert f" {r} " in p
    assert {c for _, c in zip(*tasks["count"], strict=True)} <= {1, 2, 3, 4}


def test_shipped_vlm_colour_is_above_chance_and_the_control_is_at_chance(shipped_probe):
    _, result = shipped_probe
    assert result["layers"] == 4
    colour = result["attributes"]["colour"]
    assert max(colour["accuracy"]) >= colour["chance"] + 0.3
    for name, a in result["attributes"].items():
        # the shuffled-label control is the floor: no layer reads shuffled labels above chance
        assert max(a["shuffled"]) <= a["chance"] + 0.12, (name, a["shuffled"], a["chance"])
        assert sum(a["shuffled"]) / len(a["shuffled"]) <= a["chance"] + 0.06, name


def test_probe_is_in_the_report(shipped_probe, tmp_path):
    run, _ = shipped_probe
    assert (run / "layer_probe.md").read_text().startswith("| layer | colour (shuffled)")
    assert (run / "layer_probe.png").stat().st_size > 1000
    html, md = build_report([run], tmp_path / "report.html")
    text = md.read_text()
    assert "Layer probe" in text and "shuffled labels" in text and "layer_probe" in text
