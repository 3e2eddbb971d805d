"""What stage III watches and draws besides the weights: the check that stops a run that cannot learn, the progress
bar's numbers, and the curves of ``metrics.jsonl`` (``<out>/curves/``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TrainingStalledError
from ..utils.plots import plot_curves


def idle_epochs(idle: int, rstats: dict, ustats: dict, samples: int, limit: int, epoch: int) -> int:
    """The count of consecutive epochs that could not learn (every reward NaN, every group's rewards equal, or no
    optimizer step), given the count before this epoch and its ``samples`` (prompts x group size); at ``limit``
    (``train.max_idle_epochs``; 0: never) the run stops with an error naming the cause."""
    n_valid = samples - rstats["reward/dropped"]
    all_equal = rstats.get("diag/zero_std_share") == 1.0
    if n_valid > 0 and not all_equal and ustats.get("diag/optimizer_steps", 1) > 0:
        return 0
    idle += 1
    if limit and idle >= limit:
        if n_valid <= 0:
            cause = ("every reward was NaN or raised (see the warnings above): check the rewards and their "
                     "rewards.options")
        elif all_equal:
            cause = ("every group's rewards were equal, so no sample has an advantage: check rewards.weights "
                     "(a zero weight?), the reward itself, and sampling.noise_level")
        else:
            cause = "no optimizer step ran"
        raise TrainingStalledError(f"stage III stopped after {idle} consecutive epochs that could not learn "
                                   f"(epoch {epoch}): {cause}. The last checkpoint is kept; "
                                   "train.max_idle_epochs sets the limit (0: never stop)")
    return idle


def progress_numbers(row: dict, own: dict[str, str] | None = None) -> dict[str, str]:
    """The progress bar's numbers of an epoch's metrics row: total reward, KL, the algorithm's ``own`` numbers
    (``Algorithm.progress_numbers``) and LDAM's active rewards."""
    return {"reward": f"{row['reward/total']:.3f}", "kl": f"{row['kl']:.2e}", **(own or {}),
            "ldam": ",".join(row["ldam_active"]) or "-"}


def plot_run(out: Path) -> None:
    """``<out>/curves/``: the rewards, the diagnostics and (for GenEval prompts) the total reward per task, from
    ``<out>/metrics.jsonl``."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    nan = float("nan")
    series = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("reward/")
              and k != "reward/dropped"}
    plot_curves(series, out / "curves" / "rewards.png", title=f"rewards ({out.name})")
    diag = {k: [r.get(k, nan) for r in rows] for k in ("clip_frac", "kl", "grad_norm") if k in keys}
    diag.update({k: [r.get(k, nan) for r in rows] for k in keys if k.startswith("zero_std/")})
    diag.update({k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys
                 if k.startswith(("diag/", "time/"))})
    plot_curves(diag, out / "curves" / "diagnostics.png", title=f"diagnostics ({out.name})")
    tasks = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("task/")}
    if tasks:
        plot_curves(tasks, out / "curves" / "tasks.png", title=f"total reward per GenEval task ({out.name})")
