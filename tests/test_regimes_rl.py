"""Stage III (``parauni rl``: Flow-GRPO, DiffusionNFT and AWM) in the training regimes on CPU, each compared with
the one-process float32 run: bf16 autocast, a launcher's gradient accumulation, 2-process DDP (launched as a user
launches it: ``accelerate launch --num_processes 2 --config_file configs/accelerate/ddp.yaml -m parauni rl ...``),
and the same way FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, each also resumed exactly.

Every run: the tiny model, 2 epochs of 4 prompts x 4 samples, 6 sampling steps, the redness reward, micro-batches
of 4 samples and 2 optimizer steps an epoch; the same seed. Each algorithm's config is configs/toy_grpo.yaml without
the keys it does not use (its ``unused``) or sets by its own defaults. Compared: each epoch's statistics (reward,
loss, gradient norm, clip fraction, ratio deviation, KL, the LoRA's distance from the base; all of them means over
every process) and the LoRA weights of the epoch-2 checkpoint.

Tolerances (each test states its measurements):

* 2 processes against one, in float32, under DDP, FSDP2, ZeRO-2 or ZeRO-3: the epoch-1 rewards within 1e-5
  relative, every statistic within 1e-3, the LoRA weights within 1e-3 relative L2 (epoch 2 alone moves them by 5
  times that or more), ``final/``'s transformer within 1e-5. The noise, the sample sets and the optimizer steps are
  the same, so only float32 round-off differs (batches of 8 rows instead of 16, another summation order in the
  gradient reduction), which AdamW's first step amplifies where a gradient element is near 0; measured at most
  2.5e-4 (a ratio deviation, a difference of nearly equal log-probabilities) and 2.2e-6 for the weights.
* 1 epoch, then ``--resume``, against the uninterrupted run of the same regime: bit-identical (the same process
  count and the same operations; every state the next epoch reads is in the checkpoint).
* bf16 (autocast, and FSDP2's and DeepSpeed's bf16 against the one-process bf16 run): the bounds and their
  reasons are in those tests' docstrings.

DeepSpeed's bf16 (``--mixed_precision bf16`` under ZeRO-2 or ZeRO-3) is not autocast: the engine casts the whole
transformer (frozen base and LoRA) to bf16, runs every operation on bf16 weights and keeps float32 master weights
in its optimizer. Its reference is the one-process bf16 *autocast* run, not float32: both run the transformer's
matmuls in bf16 in the rollouts and the update, so what remains between them is what bf16 weights add (bf16
norms, additions and LoRA branch, the base and the LoRA's starting values rounded once), the same kind of
difference as FSDP2's bf16 against it; against float32 the difference of autocast itself would be added on top
and hide a wrong scale or sample set less well. Hence the same bounds as FSDP2's bf16 test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from parauni.rl.algorithm import algorithm_class
from zero3_launch import zero3_launch_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_grpo.yaml"
ACCELERATE = ROOT / "configs" / "accelerate"
RUN = ["model.source=tiny", "train.epochs=2", "prompts.per_epoch=4", "sampling.group_size=4", "sampling.steps=6",
       "optim.train_batch=4", "optim.steps_per_epoch=2", "rewards.weights={redness: 1.0}", "ldam.enabled=false",
       "train.eval_before=false", "train.eval_geneval=false", "train.save_every=1", "train.logger=none"]
ALGOS = ["flow_grpo", "diffusion_nft", "awm"]
STATS = ["reward/total", "loss", "grad_norm", "clip_frac", "ratio_dev", "kl", "diag/lora_delta_norm"]
LAST = "checkpoint-000002"

needs_deepspeed = pytest.mark.skipif(find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: pip install 'parauni[deepspeed]'")


@cache
def algorithm_config(algorithm: str, folder: Path) -> Path:
    """configs/toy_grpo.yaml for ``algorithm``: ``algorithm:`` set, without the shared keys it never reads
    (``unused``: refused when set) or whose default is its own (``defaults``: the reference's)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cls = algorithm_class(algorithm)
    for key in (*getattr(cls, "unused", ()), *getattr(cls, "defaults", {})) if algorithm != "flow_grpo" else ():
        section, _, leaf = key.partition(".")
        cfg.get(section, {}).pop(leaf, None)
    cfg["algorithm"] = algorithm
    path = folder / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(out: Path, algorithm: str, launch_config: str | Path | None = None, precision: str = "no", *extra: str,
           port: int = 0, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``parauni rl`` of RUN into ``out``: one process, or ``accelerate launch --num_processes 2`` with
    ``launch_config`` (a file under configs/accelerate, or a path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **(env_extra or {}))
    config = algorithm_config(algorithm, out.parent)
    grpo = ["-m", "parauni", "rl", str(config), *RUN, f"train.output_dir={out}",
            f"train.mixed_precision='{precision}'", *extra, "--no-progress"]
    if launch_config is None:
        cmd = [sys.executable, *grpo]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision",
               precision, "--main_process_port", str(port), "--config_file", str(ACCELERATE / launch_config), *grpo]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lora(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / LAST / "trainable.safetensors"))


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative L2 difference of ``a`` to ``b``."""
    assert set(a) == set(b) and a
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b])
    return (diff.norm() / torch.cat([b[k].flatten() for k in b]).norm()).item()


def stat_diffs(run: Path, ref: Path) -> dict[str, list[float]]:
    """Per statistic, the relative difference of each epoch's value to the reference's."""
    got, want = rows(run), rows(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    return {k: [abs(g[k] - w[k]) / max(abs(w[k]), 1e-12) for g, w in zip(got, want, strict=True)]
            for k in STATS if k in want[0]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(algorithm)``: the one-process float32 run of an algorithm (run once per module); epoch 2 moves
    the LoRA weights by more than 5 times the weights' tolerance of the regimes that should agree (1e-3; measured:
    Flow-GRPO 4.7e-2, DiffusionNFT 1.1e-2 and AWM 9.6e-3 at their reference learning rates)."""
    base = tmp_path_factory.mktemp("rl_regimes")
    outs: dict[str, Path] = {}

    def get(algorithm: str) -> Path:
        if algorithm not in outs:
            out = base / f"{algorithm}_one_fp32"
            launch(out, algorithm)
            first = load_file(str(out / "checkpoint-000001" / "trainable.safetensors"))
            assert relative(lora(out), first) > 5e-3
            assert all(r["diag/trained_samples"] == 16 and r["diag/optimizer_steps"] == 2 for r in rows(out))
            outs[algorithm] = out
        return outs[algorithm]

    return get


def assert_identical(run: Path, ref: Path) -> None:
    diffs = stat_diffs(run, ref)
    print(f"\n{run.name} vs {ref.name}: " + ", ".join(f"{k} {max(v):.2g}" for k, v in diffs.items()))
    assert all(max(v) == 0 for v in diffs.values()), diffs
    a, b = lora(run), lora(ref)
    assert all(torch.equal(a[k], b[k]) for k in b)


def assert_resumed_identically(out: Path, full: Path) -> None:
    """A resumed run equals the uninterrupted one bit for bit: statistics and weights, then the EMA and (where the
    algorithm keeps one) the old policy of the last checkpoint."""
    assert_identical(out, full)
    for name in ("ema", *(["old"] if (full / LAST / "old.safetensors").is_file() else [])):
        a = load_file(str(out / LAST / f"{name}.safetensors"))
        b = load_file(str(full / LAST / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in b), name


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGOS)
def test_launcher_gradient_accumulation_changes_nothing(algorithm, reference, tmp_path):
    """A launcher's gradient accumulation (the variable Accelerate reads) must leave stage III unchanged: its
    optimizer steps are set by optim.train_batch and optim.steps_per_epoch. Same process count, same noise:
    bit-identical."""
    out = tmp_path / "accum2"
    launch(out, algorithm, env_extra={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
    assert_identical(out, reference(algorithm))


@pytest.mark.parametrize("algorithm", ["flow_grpo", *(pytest.param(a, marks=pytest.mark.slow) for a in ALGOS[1:])])
def test_two_process_ddp_matches_one_process(algorithm, reference, tmp_path, free_port):
    """2-process DDP at the same global batch (2 prompts x 4 samples a process) against one process, 2 epochs of 2
    optimizer steps. Every sample draws its noise from its own streams (keyed by its global index) and the
    optimizer steps train the same global sample sets, so the only difference is float32 round-off: a batch of 8
    rows instead of 16 in the transformer's matmuls, DDP's all-reduce (another summation order) and the mean over
    processes of the statistics. Bounds, with what was measured:

    * the rewards of epoch 1 (the same weights, the same latents): 1e-5 relative;
    * every statistic of both epochs and the gradient norm: 1e-3 relative (the epoch-2 rollout uses weights that
      already carry round-off, amplified by AdamW's first step, m / sqrt(v), where a gradient element is near 0);
    * the epoch-2 LoRA weights: 1e-3 relative L2, while epoch 2 alone moves them by 1e-2 or more.

    A per-process seed (other latents), a sum instead of a mean over processes (a gradient twice as large) or
    another sample set per step each miss these bounds by orders of magnitude."""
    out = tmp_path / "ddp"
    launch(out, algorithm, "ddp.yaml", port=free_port())
    ref = reference(algorithm)
    diffs = stat_diffs(out, ref)
    weights = relative(lora(out), lora(ref))
    print(f"\n{algorithm} ddp vs one process: " + ", ".join(f"{k} {v}" for k, v in diffs.items())
          + f", lora {weights:.2g}")
    got, want = rows(out), rows(ref)
    assert [(r["diag/trained_samples"], r["diag/optimizer_steps"]) for r in got] == \
        [(r["diag/trained_samples"], r["diag/optimizer_steps"]) for r in want]
    assert diffs["reward/total"][0] <= 1e-5, diffs
    assert all(max(v) <= 1e-3 for v in diffs.values()), diffs
    assert weights <= 1e-3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the sharded engines: launch config, and a file of its checkpoint that only that engine writes (it ran, rather than
# plain DDP): FSDP2's sharded model state, ZeRO-2's one model state, ZeRO-3's model state of each process
ENGINES = {"fsdp2": ("fsdp.yaml", "pytorch_model_fsdp_0"),
           "zero2": ("deepspeed_zero2.yaml", "pytorch_model/mp_rank_00_model_states.pt"),
           "zero3": ("zero3", "pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt")}
# the default run's slice: Flow-GRPO (its rollouts merge the LoRA into a plain copy: whole weights gathered twice an
# epoch) under FSDP2 and ZeRO-3, 10-20 s each on an idle machine; the rest runs with the slow tests
FAST = {("fsdp2", "flow_grpo"), ("zero3", "flow_grpo")}


def engine_cases() -> list:
    return [pytest.param(engine, algorithm, marks=[*([needs_deepspeed] if engine != "fsdp2" else []),
                                                   *([] if (engine, algorithm) in FAST else [pytest.mark.slow])],
                         id=f"{engine}-{algorithm}")
            for engine in ENGINES for algorithm in ALGOS]


def engine_config(engine: str, folder: Path) -> str | Path:
    """The launch config of ``engine``: a file under configs/accelerate, or for ZeRO-3 deepspeed_zero3.yaml with
    every parameter partitioned (tests/zero3_launch.py: at tiny size DeepSpeed's default threshold partitions
    none)."""
    config = ENGINES[engine][0]
    return zero3_launch_config(folder) if config == "zero3" else config


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """``sharded(engine, algorithm)``: the uninterrupted 2-epoch run of an algorithm under a sharded engine
    (:data:`ENGINES`), run once per module."""
    base = tmp_path_factory.mktemp("rl_sharded")
    outs: dict[tuple[str, str], Path] = {}

    def get(engine: str, algorithm: str) -> Path:
        if (engine, algorithm) not in outs:
            out = base / f"{engine}_{algorithm}"
            launch(out, algorithm, engine_config(engine, base), port=_port())
            assert (out / LAST / ENGINES[engine][1]).exists(), f"no {engine} checkpoint: {engine} did not run"
            outs[engine, algorithm] = out
        return outs[engine, algorithm]

    return get


@pytest.mark.parametrize(("engine", "algorithm"), engine_cases())
def test_sharded_engine_matches_one_process(engine, algorithm, reference, sharded):
    """``accelerate launch --num_processes 2 --config_file configs/accelerate/<engine's>.yaml -m parauni rl``.

    * FSDP2 (fsdp.yaml, ``fully_shard`` on CPU over gloo): every trainable tensor, its EMA, snapshots and an old
      policy's copy are DTensor shards, updated shard by shard; the rollouts' merged copies, ``final/`` and the
      checkpoint's tensors all-gather them.
    * DeepSpeed ZeRO-2: the engine steps once an optimizer step, at the accumulation boundary that the step's
      last backward pass sets, with the clipping of ``optim.max_grad_norm`` and the scheduled learning rate.
    * DeepSpeed ZeRO-3 (every parameter partitioned, the frozen base too): as ZeRO-2, and the policy gathers the
      partitions wherever it reads or writes whole weights.

    The same bounds as 2-process DDP and for the same reasons: the noise, sample sets and steps are the same, so
    only float32 round-off differs. Measured (largest over both epochs and the three algorithms): epoch-1 rewards
    equal; statistics 2.5e-4 (FSDP2, Flow-GRPO's ratio deviation, a difference of nearly equal
    log-probabilities) and 2e-4 (ZeRO-3, the same), 1.4e-4 (ZeRO-2, Flow-GRPO's loss); LoRA weights 2.2e-6 under
    each engine."""
    out, ref = sharded(engine, algorithm), reference(algorithm)
    diffs = stat_diffs(out, ref)
    weights = relative(lora(out), lora(ref))
    print(f"\n{algorithm} {engine} vs one process: " + ", ".join(f"{k} {max(v):.2g}" for k, v in diffs.items())
          + f", lora {weights:.2g}")
    assert [r["diag/optimizer_steps"] for r in rows(out)] == [2, 2]
    assert diffs["reward/total"][0] <= 1e-5, diffs
    assert all(max(v) <= 1e-3 for v in diffs.values()), diffs
    assert weights <= 1e-3
    final = relative(load_file(str(next((out / "final" / "transformer").glob("*.safetensors")))),
                     load_file(str(next((ref / "final" / "transformer").glob("*.safetensors")))))
    assert final <= 1e-5, f"final/ (the EMA LoRA merged into the whole transformer) {final:.2g} from one process's"


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "algorithm"), engine_cases())
def test_sharded_engine_resumes_exactly(engine, algorithm, sharded, tmp_path):
    """1 epoch, then ``--resume`` for the second from its checkpoint (the engine's model and optimizer states, the
    whole trainable weights, their EMA and the algorithm's state laid out again as the engine shards them):
    bit-identical to the uninterrupted run, statistics, weights, EMA and old policy."""
    out, config = tmp_path / "resumed", engine_config(engine, tmp_path)
    launch(out, algorithm, config, "no", "train.epochs=1", port=_port())
    launch(out, algorithm, config, "no", "--resume", port=_port())
    full = sharded(engine, algorithm)
    assert_resumed_identically(out, full)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_full_finetune_under_sharded_engine_matches_one_process(engine, tmp_path):
    """Flow-GRPO with ``model.finetune: full``: every transformer weight trained, sharded by the engine, its EMA and
    the distance travelled (``diag/weight_delta_norm``) read whole; the KL reference is a plain copy of the start.
    The statistics within 1e-3 relative (measured 1.1e-4, the loss), the epoch-2 weights within 5e-3 of what epoch
    2 moved them (measured 4.6e-4 FSDP2, 6.7e-4 ZeRO-3): AdamW moves every one of the whole transformer's weights
    by about lr x the sign of its gradient, so round-off decides the move of the many with a gradient near 0; a
    wrong sample set or scale moves them by the whole movement."""
    one, out = tmp_path / "one_full", tmp_path / f"{engine}_full"
    launch(one, "flow_grpo", None, "no", "model.finetune=full")
    launch(out, "flow_grpo", engine_config(engine, tmp_path), "no", "model.finetune=full", port=_port())
    assert (out / LAST / ENGINES[engine][1]).exists(), f"{engine} did not run"
    got, want = rows(out), rows(one)
    diffs = {k: max(abs(g[k] - w[k]) / max(abs(w[k]), 1e-12) for g, w in zip(got, want, strict=True))
             for k in [*STATS[:-1], "diag/weight_delta_norm"] if k in want[0]}
    b2, b1 = lora(one), load_file(str(one / "checkpoint-000001" / "trainable.safetensors"))
    a2 = lora(out)
    assert set(a2) == set(b2)
    moved = torch.cat([(b2[k] - b1[k]).flatten() for k in b2]).norm()
    off = (torch.cat([(a2[k] - b2[k]).flatten() for k in b2]).norm() / moved).item()
    print(f"\nfull fine-tune {engine} vs one process: {diffs}, weights {off:.2g} of epoch 2's move")
    assert all(v <= 1e-3 for v in diffs.values()), diffs
    assert off <= 5e-3


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGOS)
def test_fsdp2_bf16_matches_one_process_bf16(algorithm, tmp_path):
    """FSDP2 with ``--mixed_precision bf16`` against the one-process bf16 run. FSDP2's bf16 is not autocast alone:
    its ``MixedPrecisionPolicy`` all-gathers the weights in bf16 and runs the whole transformer on them (norms,
    additions and the LoRA branch too, where autocast keeps float32), so the two differ by bf16's rounding
    (2^-9 relative per operation), as bf16 differs from float32. Bounds, with what was measured (Flow-GRPO /
    DiffusionNFT / AWM):

    * the epoch-1 reward within 5e-2 (measured 9.3e-4 / 6.2e-8 / 1.7e-2: AWM's rollout runs the adapted
      transformer, in bf16 weights under FSDP2);
    * the first gradient norm within test_bf16_matches_float32's bounds, 5e-2 / 1e-1 / 1.5e-1 (measured 5.4e-3 /
      3e-2 / 5.8e-2);
    * the epoch-2 LoRA weights within 5e-2 relative L2 (measured 2.3e-2 / 1.1e-2 / 1.2e-2), for the reasons given
      there: AdamW's first steps move a near-zero gradient element by about lr with bf16's sign."""
    one, fsdp = tmp_path / "one_bf16", tmp_path / "fsdp2_bf16"
    launch(one, algorithm, None, "bf16")
    launch(fsdp, algorithm, "fsdp.yaml", "bf16", port=_port())
    assert (fsdp / LAST / ENGINES["fsdp2"][1]).exists(), "FSDP2 did not run"
    diffs = stat_diffs(fsdp, one)
    weights = relative(lora(fsdp), lora(one))
    print(f"\n{algorithm} fsdp2 bf16 vs one process bf16: {diffs}, lora {weights:.2g}")
    bound = {"flow_grpo": 5e-2, "diffusion_nft": 1e-1, "awm": 1.5e-1}[algorithm]
    assert diffs["reward/total"][0] <= 5e-2 and diffs["grad_norm"][0] <= bound, diffs
    assert weights <= 5e-2


@pytest.fixture(scope="module")
def reference_bf16(tmp_path_factory):
    """``reference_bf16(algorithm)``: the one-process bf16 autocast run of an algorithm (run once per module)."""
    base = tmp_path_factory.mktemp("rl_bf16")
    outs: dict[str, Path] = {}

    def get(algorithm: str) -> Path:
        if algorithm not in outs:
            outs[algorithm] = base / f"{algorithm}_one_bf16"
            launch(outs[algorithm], algorithm, None, "bf16")
        return outs[algorithm]

    return get


def deepspeed_bf16_cases(fast: set[tuple[str, str]]) -> list:
    return [pytest.param(engine, algorithm, marks=[needs_deepspeed, *([] if (engine, algorithm) in fast
                                                                      else [pytest.mark.slow])],
                         id=f"{engine}-{algorithm}")
            for engine in ("zero2", "zero3") for algorithm in ALGOS]


def assert_deepspeed_bf16_ran(out: Path) -> None:
    """The engine's checkpoint holds bf16 optimizer states: DeepSpeed ran, with its bf16."""
    assert (out / LAST / "pytorch_model" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").exists(), \
        "no DeepSpeed bf16 checkpoint: DeepSpeed's bf16 did not run"


@pytest.mark.parametrize(("engine", "algorithm"), deepspeed_bf16_cases({("zero2", "flow_grpo")}))
def test_deepspeed_bf16_matches_one_process_bf16(engine, algorithm, reference_bf16, tmp_path):
    """DeepSpeed ZeRO-2 / ZeRO-3 with ``--mixed_precision bf16`` (bf16 module weights, float32 master weights)
    against the one-process bf16 autocast run (the module docstring says why that reference). The policy keeps
    the EMA, snapshots, an old policy and the checkpoint's weights from the float32 master weights, and ``final/``
    merges the float32 EMA LoRA into the bf16 base the engine ran, in float32. Bounds, those of FSDP2's bf16 test
    for the same reasons (bf16 weights round every operation, 2^-9 relative, and AdamW's first steps move a
    gradient element near 0 by about lr with bf16's sign), with what was measured (ZeRO-2 / ZeRO-3, Flow-GRPO,
    DiffusionNFT, AWM):

    * the epoch-1 reward within 5e-2 (measured 4.5e-4, 1.7e-2, 1.7e-2 / 6.4e-4, 1.7e-2, 1.7e-2: DiffusionNFT's
      and AWM's rollouts run the bf16 weights, the one-process run float32 weights under autocast);
    * the first gradient norm within 5e-2 / 1e-1 / 1.5e-1, test_bf16_matches_float32's bounds (measured 6e-3,
      7.1e-2, 4.1e-2 / 5.9e-3, 7e-2, 3.8e-2);
    * the epoch-2 LoRA weights within 5e-2 relative L2 (measured 2.4e-2, 5.2e-3, 6.8e-3 / 2.3e-2, 5.1e-3,
      6.8e-3);
    * ``final/``'s transformer float32, within 1e-2 relative L2 (measured 1.5e-3 to 1.8e-3: the base weights
      rounded to bf16 once, 2^-9 relative at most, and the EMA LoRA's difference);
    * the checkpoint's LoRA and EMA float32 files, the LoRA the master weights (not bf16 values).
    """
    out, one = tmp_path / f"{engine}_bf16", reference_bf16(algorithm)
    launch(out, algorithm, engine_config(engine, tmp_path), "bf16", port=_port())
    assert_deepspeed_bf16_ran(out)
    diffs = stat_diffs(out, one)
    weights = relative(lora(out), lora(one))
    final_files = [load_file(str(next((run / "final" / "transformer").glob("*.safetensors")))) for run in (out, one)]
    final = relative(*final_files)
    print(f"\n{algorithm} {engine} bf16 vs one process bf16: " + ", ".join(f"{k} {max(v):.2g}" for k, v in
                                                                        diffs.items())
          + f", epoch-1 reward {diffs['reward/total'][0]:.2g}, first grad_norm {diffs['grad_norm'][0]:.2g}, "
          f"lora {weights:.2g}, final {final:.2g}")
    assert [r["diag/optimizer_steps"] for r in rows(out)] == [2, 2]
    bound = {"flow_grpo": 5e-2, "diffusion_nft": 1e-1, "awm": 1.5e-1}[algorithm]
    assert diffs["reward/total"][0] <= 5e-2 and diffs["grad_norm"][0] <= bound, diffs
    assert weights <= 5e-2
    assert final <= 1e-2
    for tensors in (final_files[0], lora(out), load_file(str(out / LAST / "ema.safetensors"))):
        assert {v.dtype for v in tensors.values()} == {torch.float32}
    # the checkpoint's weights are the float32 master weights, not the module's bf16 copy upcast (measured: none of
    # their elements is a bf16 value)
    saved = torch.cat([v.flatten() for v in lora(out).values()])
    assert (saved.bfloat16().float() == saved).float().mean() < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs_deepspeed) for e in ("zero2", "zero3")])
def test_deepspeed_bf16_update_is_on_policy(engine, tmp_path):
    """Flow-GRPO under DeepSpeed's bf16 with one optimizer step an epoch: every micro-batch is on-policy, so the
    rollout (the engine's module: bf16 weights) and the update must see the same weights at the same precision,
    ratio 1 and nothing clipped (a ratio deviation below 1e-6, where a clip range of 1e-4 clips none), in epoch 1
    (the LoRA's B still 0) and in epoch 2 (a trained LoRA). Measured: 0 and 0 under both stages."""
    out = tmp_path / engine
    launch(out, "flow_grpo", engine_config(engine, tmp_path), "bf16", "optim.steps_per_epoch=1",
           "optim.train_batch=8", "optim.clip_range=1e-4", port=_port())
    assert_deepspeed_bf16_ran(out)
    got = rows(out)
    print(f"\n{engine} bf16: " + ", ".join(f"clip_frac {r['clip_frac']}, ratio_dev {r['ratio_dev']}" for r in got))
    assert all(r["diag/optimizer_steps"] == 1 and r["diag/trained_samples"] == 16 for r in got)
    assert all(r["clip_frac"] == 0 and r["ratio_dev"] < 1e-6 for r in got)


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "algorithm"), deepspeed_bf16_cases(set()))
def test_deepspeed_bf16_resumes_exactly(engine, algorithm, tmp_path):
    """ZeRO-2 or ZeRO-3 with DeepSpeed's bf16: 1 epoch, then ``--resume`` (the engine restores its bf16 module and
    float32 master weights; the EMA and an old policy come back float32 from the checkpoint) is bit-identical to
    the uninterrupted 2 epochs: statistics, weights, EMA and old policy."""
    full, out, config = tmp_path / "full", tmp_path / "resumed", engine_config(engine, tmp_path)
    launch(full, algorithm, config, "bf16", port=_port())
    launch(out, algorithm, config, "bf16", "train.epochs=1", port=_port())
    launch(out, algorithm, config, "bf16", "--resume", port=_port())
    assert_deepspeed_bf16_ran(out)
    assert_resumed_identically(out, full)


@pytest.mark.slow
@pytest.mark.parametrize(("launch_config", "precision", "extra", "message"), [
    pytest.param("deepspeed_zero2.yaml", "fp16", (), "runs in float32 or bf16, not fp16", marks=needs_deepspeed),
    pytest.param("deepspeed_zero2.yaml", "bf16", ("model.finetune=full",),
                 "model.finetune=full under DeepSpeed's bf16 is not supported", marks=needs_deepspeed),
    ("fsdp.yaml", "no", ("model.train_lim=true",), "model.train_lim=true is not supported under FSDP")],
    ids=["zero2-fp16", "zero2-bf16-full", "fsdp2-train_lim"])
def test_unsupported_sharded_launch_is_refused_in_one_line(launch_config, precision, extra, message, tmp_path):
    """DeepSpeed's fp16 (loss scaling, skipped steps); a full fine-tune under DeepSpeed's bf16 (its float32
    starting copy beside bf16 weights); a trained LIM outside the sharded transformer. Each is refused before any
    training, in one line naming the alternative, instead of training as something else."""
    out = tmp_path / "refused"
    with pytest.raises(AssertionError, match=message):
        launch(out, "flow_grpo", launch_config, precision, *extra, port=_port())
    assert not (out / "metrics.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGOS)
def test_bf16_matches_float32(algorithm, reference, tmp_path):
    """bf16 autocast (one process) against float32, the same noise. Bounds, measured and explained:

    * the first update's gradient norm within 5e-2 relative for Flow-GRPO (measured 4.6e-3), 1e-1 for DiffusionNFT
      and 1.5e-1 for AWM (measured 4.5e-2 and 8.8e-2): bf16 matmuls round to 8 mantissa bits (2^-9 = 2e-3
      relative per operation); the two flow-matching objectives' gradients are sums over samples weighted by
      advantages of mean zero in each group, so most of each sample's gradient cancels and the rounding of the
      parts is a larger share of what remains;
    * the epoch-2 LoRA weights within 5e-2 relative L2 (measured 5.7e-3 for AWM; epoch 2 alone moves them by
      1e-2 to 5e-2): AdamW's first steps move each weight by about lr x sign(gradient), and a gradient element near
      zero takes bf16's rounding as its sign; a wrong scale or a wrong sample set moves them by the movement
      itself.
    * the epoch-1 reward within 2e-2: the rollout of epoch 1 uses the starting weights, under the update's
      autocast (see test_bf16_first_update_is_on_policy): its images move by bf16's rounding only.

    Flow-GRPO's loss, ratio deviation and KL are differences of nearly equal log-probabilities (1e-6 here):
    bf16 changes them by 100% and they are not compared."""
    out = tmp_path / "bf16"
    launch(out, algorithm, None, "bf16")
    diffs = stat_diffs(out, reference(algorithm))
    print(f"\nbf16 vs float32: {diffs}")
    bound = {"flow_grpo": 5e-2, "diffusion_nft": 1e-1, "awm": 1.5e-1}[algorithm]
    assert diffs["reward/total"][0] <= 2e-2 and diffs["grad_norm"][0] <= bound, diffs
    assert relative(lora(out), lora(reference(algorithm))) <= 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("merge_lora", [
    "true", "false"])
def test_bf16_first_update_is_on_policy(merge_lora, tmp_path):
    """Flow-GRPO with one optimizer step an epoch: every micro-batch is on-policy, so the ratio is 1 and nothing
    is clipped, in bf16 as in float32 (a ratio deviation below 1e-6, where a clip range of 1e-4 clips none)."""
    out = tmp_path / f"merge_{merge_lora}"
    launch(out, "flow_grpo", None, "bf16", "train.epochs=1", "optim.steps_per_epoch=1", "optim.train_batch=16",
           "optim.clip_range=1e-4", f"sampling.merge_lora={merge_lora}")
    first = rows(out)[0]
    print(f"\nmerge_lora={merge_lora}: clip_frac {first['clip_frac']}, ratio_dev {first['ratio_dev']}")
    assert first["diag/optimizer_steps"] == 1 and first["diag/trained_samples"] == 16
    assert first["clip_frac"] == 0 and first["ratio_dev"] < 1e-6
