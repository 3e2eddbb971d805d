"""Per-layer linear probes: how well an attribute of the prompt can be read from each VLM layer's query states.

For every decoder layer ``l`` of the frozen VLM and every attribute (e.g. the first object's colour), a
multinomial logistic regression is fitted on frozen features of the training prompts and its accuracy measured on
held-out prompts (a split of distinct prompts, so no test prompt is ever seen by the probe). The features of a
prompt at layer ``l`` are its query states there (the positions the ParaUni conditioner reads: the prompt in the
conditioner's template followed by the learnable queries, through :meth:`Backbone.__call__`), averaged over the
queries: ``(D,)``.

A probe is only evidence where it beats a floor: every cell reports the majority-class rate of its test prompts
(``chance``) and a control probe fitted on the same features with the training labels shuffled (``shuffled``),
which must sit at chance (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks", make the
same point with control tasks).

The probe: features standardised with the training prompts' mean and std, weights fitted by L-BFGS on the mean
cross-entropy plus ``l2 * ||W||^2`` (``l2`` 1e-3 by default), from zeros, so a run is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..models.prompt import tokenize_prompts

PROBE_JSON, PROBE_MD, PROBE_PNG = "layer_probe.json", "layer_probe.md", "layer_probe.png"


@torch.no_grad()
def query_features(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Query states of every decoder layer of ``pipe``'s VLM, averaged over the queries: ``(L, P, D)`` for
    ``P`` prompts (float32, on the CPU)."""
    cond = pipe.conditioner
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = tokenize_prompts(pipe.tokenizer, cond.template, list(prompts[s:s + batch_size]), None, None)
        dev = cond.queries.device
        states = pipe.backbone(ids.to(dev), mask.to(dev), cond.queries, None, layers=None,
                               final_norm=cond.config.final_norm)  # (L, B, N, D)
        out.append(states.float().mean(2).cpu())
    return torch.cat(out, 1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, iters: int = 100
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on ``x`` ``(n, D)``, labels ``y`` ``(n,)`` in ``0..n_classes-1``; returns
    ``(mean, std, W (D, K), b (K,))`` (the features' standardisation and the weights)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   n_classes: int, l2: float = 1e-3) -> float:
    """Test accuracy of a probe fitted on the training features."""
    mean, std, w, b = fit_probe(x_train, y_train, n_classes, l2)
    pred = (((x_test.double() - mean) / std) @ w + b).argmax(1)
    return float((pred == y_test).double().mean())


def split_indices(n: int, seed: int, test_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` distinct prompts into training and test indices."""
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, round(test_share * n))
    return np.sort(order[k:]), np.sort(order[:k])


def probe_layers(pipe, tasks: Mapping[str, tuple[Sequence[str], Sequence[str]]], seed: int = 0,
                 l2: float = 1e-3, test_share: float = 0.3) -> dict:
    """Probe every layer for every attribute.

    ``tasks``: attribute -> ``(prompts, labels)`` (distinct prompts, any hashable labels). Returns ``{"layers":
    L, "attributes": {name: {"classes", "n_train", "n_test", "chance", "accuracy": [L], "shuffled": [L],
    "best_layer"}}}`` (layers counted from 0, the first decoder layer)."""
    result: dict = {"seed": seed, "l2": l2, "test_share": test_share, "attributes": {}}
    for name, (prompts, labels) in tasks.items():
        classes = sorted(set(labels), key=str)
        y = torch.tensor([classes.index(v) for v in labels])
        feats = query_features(pipe, prompts)  # (L, P, D)
        tr, te = split_indices(len(prompts), seed, test_share)
        shuffled = y[tr][torch.from_numpy(np.random.default_rng(seed + 1).permutation(len(tr)))]
        acc, ctrl = [], []
        for layer in feats:
            acc.append(probe_accuracy(layer[tr], y[tr], layer[te], y[te], len(classes), l2))
            ctrl.append(probe_accuracy(layer[tr], shuffled, layer[te], y[te], len(classes), l2))
        counts = np.bincount(y[te].numpy(), minlength=len(classes))
        result["layers"] = feats.shape[0]
        result["attributes"][name] = {
            "classes": [str(c) for c in classes], "n_train": len(tr), "n_test": len(te),
            "chance": float(counts.max() / counts.sum()), "accuracy": acc, "shuffled": ctrl,
            "best_layer": int(np.argmax(acc))}
    return result


def format_probe_markdown(result: dict) -> str:
    """A table: one row per layer, per attribute the probe's test accuracy (and the shuffled-label control), then
    the chance rate and the prompt counts."""
    attrs = result["attributes"]
    head = "| layer | " + " | ".join(f"{a} (shuffled)" for a in attrs) + " |"
    lines = [head, "|" + "---|" * (len(attrs) + 1)]
    for layer in range(result["layers"]):
        cells = [f"{v['accuracy'][layer]:.3f} ({v['shuffled'][layer]:.3f})" for v in attrs.values()]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("| chance | " + " | ".join(f"{v['chance']:.3f}" for v in attrs.values()) + " |")
    lines.append("| prompts train/test | " + " | ".join(f"{v['n_train']}/{v['n_test']}" for v in attrs.values())
                 + " |")
    return "\n".join(lines) + "\n"


def plot_probe(result: dict, path: str | Path) -> None:
    """Heat map: layers (rows) x attributes (columns), colour = test accuracy above chance, scaled per column to
    ``(acc - chance) / (1 - chance)``; cells annotated with the raw accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = result["attributes"]
    acc = np.array([v["accuracy"] for v in attrs.values()]).T  # (L, A)
    chance = np.array([v["chance"] for v in attrs.values()])
    lift = (acc - chance) / np.maximum(1 - chance, 1e-6)
    fig, ax = plt.subplots(figsize=(1.4 * len(attrs) + 2, 0.45 * result["layers"] + 1.5))
    im = ax.imshow(lift, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(attrs)), list(attrs))
    ax.set_yticks(range(result["layers"]), [str(i) for i in range(result["layers"])])
    ax.set_ylabel("decoder layer")
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if lift[i, j] < 0.6 else "black",
                fontsize=8)
    fig.colorbar(im, ax=ax, label="(accuracy - chance) / (1 - chance)")
    ax.set_title(result.get("model") or "linear probe of the query states")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_probe(result: dict, out: str | Path) -> dict[str, Path]:
    """``layer_probe.json``, ``layer_probe.md`` and ``layer_probe.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / PROBE_JSON, "md": out / PROBE_MD, "png": out / PROBE_PNG}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(format_probe_markdown(result))
    plot_probe(result, paths["png"])
    return paths
