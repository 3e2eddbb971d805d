"""Time every step of the v2 toy pipeline for a few steps and estimate each step's full time at its config's length.

    PYTHONPATH=src python benchmarks/toy_v2_speed.py --out /tmp/v2speed [--steps 20] [--epochs 10] [--vlm-steps 3]

Each step is the real ``parauni`` command with its shipped v2 config, cut to ``--steps`` optimizer steps (stage III:
``--epochs`` epochs) and without its end-of-run evaluation; each feeds the next (the short VLM and prior runs are
the stage-I models, the stage-II run the stage-III base), so the numbers are speeds only. The time per step is
read from each command's own log, from its first logged step to its last (setup and the first step left out);
the reward model's pool rendering is timed apart and scaled to the config's pool. The end-of-run toy GenEval v2
is timed on ``--eval-prompts`` prompts per task and split, and scaled to the config's prompts and images.
Writes ``<out>/speed.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs"


LAST: dict[str, float] = {}  # the last command's wall and CPU seconds


def parauni(*args: str) -> None:
    """Run a ``parauni`` command; its wall and CPU seconds (all its threads) go to :data:`LAST`."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    c0, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "parauni", *args], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST.update(wall=time.perf_counter() - w0, cpu=c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)


def per_step(points: list[tuple[int, float]]) -> float:
    """Seconds per step between the first and the last ``(step, elapsed seconds)``."""
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (t1 - t0) / (s1 - s0)


def log_points(path: Path, pattern: str) -> list[tuple[int, float]]:
    return [(int(m[1]), float(m[2])) for m in re.finditer(pattern, path.read_text())]


def metrics_per_step(path: Path) -> float:
    """Stages I/II: ``it_per_s`` is the mean rate since the start of the run, so step k ended at k / rate."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return per_step([(r["step"], r["step"] / r["it_per_s"]) for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--vlm-steps", type=int, default=20)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--eval-prompts", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="steps to run (default all)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "speed.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    n = args.steps
    want = set(args.only or ["vlm", "prior", "rewards", "stage1", "stage2", "rl", "eval"])

    def save(name: str, **v) -> None:
        # CPU seconds per step: the wall seconds per step times the command's CPU / wall ratio (its setup and
        # evaluation left out as the wall time per step leaves them out); on an idle 2-core machine a step takes
        # between half of that (2 threads, fully parallel) and all of it
        v["cpu_per_step"] = v["s_per_step"] * LAST["cpu"] / LAST["wall"]
        res[name] = {**v, "cmd_wall_s": LAST["wall"], "cmd_cpu_s": LAST["cpu"], "load": os.getloadavg()[0]}
        res_path.write_text(json.dumps(res, indent=2) + "\n")
        print(name, res[name], flush=True)

    from parauni.rl.config import load_grpo_config
    from parauni.toy.config import load_pretrain_prior_config, load_pretrain_vlm_config, load_train_rewards_config
    from parauni.train.config import load_config

    if "vlm" in want:
        parauni("toy", "pretrain-vlm", "--config", str(CFG / "toy_pretrain_vlm_v2.yaml"), "--out", str(out / "vlm"),
                "--steps", str(args.vlm_steps), "--eval-examples", "4", "--eval-every", "0", "train.log_every=1")
        s = per_step(log_points(out / "vlm" / "train_log.txt", r"step (\d+) loss \S+ lr \S+ elapsed ([\d.]+)s"))
        save("vlm", s_per_step=s, measured=args.vlm_steps,
             full_steps=load_pretrain_vlm_config(CFG / "toy_pretrain_vlm_v2.yaml").train.steps)
    if "prior" in want:
        parauni("toy", "pretrain-prior", "--config", str(CFG / "toy_pretrain_prior_v2.yaml"), "--out",
                str(out / "prior"), "--steps", str(n), "--ae-steps", str(n), "--log-every", "1",
                "train.checkpoint_every=0")
        log = out / "prior" / "train_log.txt"
        cfg = load_pretrain_prior_config(CFG / "toy_pretrain_prior_v2.yaml").train
        save("prior_ae", s_per_step=per_step(log_points(log, r"ae step (\d+) loss \S+ elapsed ([\d.]+)s")),
             measured=n, full_steps=cfg.ae_steps)
        save("prior", s_per_step=per_step(log_points(log, r"\nstep (\d+) loss .* elapsed ([\d.]+)s")),
             measured=n, full_steps=cfg.steps)
    if "rewards" in want:
        parauni("toy", "train-rewards", "--config", str(CFG / "toy_train_rewards_v2.yaml"), "--out",
                str(out / "alignment"), "--steps", str(n), "--pool", str(args.pool), "train.log_every=1",
                "train.checkpoint_every=0")
        pts = log_points(out / "alignment" / "train_log.txt", r"step (\d+) loss \S+ lr \S+ elapsed ([\d.]+)s")
        cfg = load_train_rewards_config(CFG / "toy_train_rewards_v2.yaml")
        render = pts[0][1] / (args.pool + 1024)  # the pool and the 1024 held-out pairs, before step 0
        save("rewards", s_per_step=per_step(pts), measured=n, full_steps=cfg.train.steps,
             extra_s=render * (cfg.data.pool + 1024), extra="rendering the pool")
        res["rewards"]["extra_cpu_s"] = res["rewards"]["extra_s"] * LAST["cpu"] / LAST["wall"]
    models = [f"model.vlm={out / 'vlm'}", f"model.transformer={out / 'prior'}"]
    common = [f"train.steps={n}", "train.eval_geneval=false", "train.log_every=1", f"train.save_every={n}",
              "train.logger=none", "optim.warmup_steps=1", "--no-progress"]
    for stage in ("stage1", "stage2"):
        if stage not in want:
            continue
        for variant, suffix in (("all", ""), ("last", "_lastlayer")):
            name = f"toy_{stage}{suffix}_v2.yaml"
            init = [f"model.init={out / f'stage1_{variant}'}"] if stage == "stage2" else []
            run = out / f"{stage}_{variant}"
            parauni("train", str(CFG / name), *models, *init, f"train.output_dir={run}", *common)
            save(f"{stage}_{variant}", s_per_step=metrics_per_step(run / "metrics.jsonl"), measured=n,
                 full_steps=load_config(CFG / name).train.steps, config=name)
            if stage == "stage2" and variant == "all":  # the stage-III base (final/ is written by the evaluation)
                parauni("export", str(run / f"checkpoint-{n:07d}"), "--out", str(run / "final"))
    if "rl" in want:
        for algo in ("nft", "awm", "grpo"):
            name = f"toy_{algo}_geneval_v2.yaml"
            run = out / f"rl_{algo}"
            parauni("rl", str(CFG / name), f"model.source={out / 'stage2_all' / 'final'}",
                    f"train.epochs={args.epochs}", "train.eval_geneval=false", f"train.save_every={args.epochs}",
                    "train.logger=none", "train.max_idle_epochs=0", f"train.output_dir={run}", "--no-progress")
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            secs = [r["seconds"] for r in rows if "seconds" in r][1:]  # the first epoch warms up
            save(f"rl_{algo}", s_per_step=sum(secs) / len(secs), measured=len(secs), unit="epoch",
                 full_steps=load_grpo_config(CFG / name).train.epochs, config=name)
    if "eval" in want:
        importlib.import_module("parauni.toy.tokenizer")  # the v2 pipeline's tokenizer class, for from_pretrained
        from parauni.toy.evaluation import toy_geneval

        t0 = time.perf_counter()
        s = toy_geneval(str(out / "stage2_all" / "final"), out / "eval", images_per_prompt=1, steps=20,
                        limit=args.eval_prompts, world="v2",
                        mode="overwrite")
        secs = time.perf_counter() - t0
        images = sum(s["splits"][k]["total_images"] for k in s["splits"]) if "splits" in s else s["total_images"]
        LAST.update(wall=secs, cpu=secs)  # in this process: its wall time (under load, more than its CPU time)
        save("eval_v2", s_per_step=secs / images, measured=images, full_steps=600, unit="image")
    print_table(res)
    return 0


def print_table(res: dict) -> None:
    print("| step | measured | wall s per step (load) | CPU s per step | full length | estimated full time, min "
          "(CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in res.items():
        full = v["full_steps"] * v["cpu_per_step"] + v.get("extra_cpu_s", 0)
        print(f"| {name} | {v['measured']} {v.get('unit', 'step')}s | {v['s_per_step']:.2f} ({v['load']:.1f}) | "
              f"{v['cpu_per_step']:.2f} | {v['full_steps']} | {full / 60:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
