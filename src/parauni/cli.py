"""``parauni <command>``: a thin argparse front over the library."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from .checks import NON_NEGATIVE_INT, POSITIVE_INT, RESOLUTION, SEED, Check, arg_type, nonempty_str, number
from .errors import ConfigError, UsageError


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images from prompts")
    p.add_argument("--model", required=True, help="a preset name, 'tiny', or a saved pipeline folder / hub id")
    p.add_argument("--prompt", action="append", required=True, help="a caption; repeat for several")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image", help="input image for image-to-image (the prompt is then the instruction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--images-per-prompt", type=int, default=1,
                   help="images of each prompt (image k of prompt i is seeded seed + i * N + k)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per pipeline call; each image has its own seed, so the images do not depend on it")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    _add_dtype_option(p)
    p.add_argument("--force", action="store_true",
                   help="allow --height / --width over 4x the model's native side (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (images, denoising steps)")
    p.set_defaults(func=lambda a: _generate().run_generate(a))


def _add_dtype_option(p) -> None:
    """``--dtype`` of the commands that run a pipeline (:func:`parauni.pipelines.loading.resolve_dtype`)."""
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights' dtype: auto (default) is bf16 on CUDA and fp32 on CPU")


# ---- evaluation and reports: `parauni eval geneval|dpg|reconstruct`, `parauni report` --------------------------

from .eval import GENEVAL_SCORER_ENV  # noqa: E402 - the help text names it (a light import)

GENEVAL_SCORERS = ("auto", "native", "official", "toy")
GENEVAL_HELP = f"""Generate GenEval's layout (<out>/<index:05d>/metadata.jsonl + samples/<k:04d>.png), resumable:
<out>/provenance.json records the model (a hash of its weights), steps, guidance, seed, resolution, images per
prompt and prompts; a rerun keeps finished images only when all of that matches (else it stops and names what
differs; --overwrite regenerates). --limit N: the first N prompts of each task.
Then --scorer (results.jsonl + summary.json in --out):
  auto (default): toy models (the toy prior, a pipeline folder built on the toy VLM) or toy metadata with the toy
    detector; other models with the official scorer as below.
  toy: the toy detector. native: GenEval's rules on transformers' Mask2Former (--detector) + CLIP (--clip) --
    GenEval-compatible scores, not official ones (another detector checkpoint; see the README).
  official: the official scorer (mmdetection 2.x, Mask2Former, CLIP, a GPU): set {GENEVAL_SCORER_ENV} to its
    command, e.g.
  export {GENEVAL_SCORER_ENV}="python /path/geneval/evaluation/evaluate_images.py {{images}}
      --outfile {{outfile}} --model-path /path/to/detector"    (one line)
({{images}} and {{outfile}} are filled in; without them the images folder and --outfile OUT/results.jsonl are
appended); its results.jsonl is then summarised into summary.json. Otherwise the command prints how to run it."""


WISE_JUDGE_ENV = "PARAUNI_WISE_JUDGE"
WISE_HELP = f"""Generate WISE's layout (<out>/<prompt_id>.png, one image per prompt, seed + prompt_id), resumable with
<out>/provenance.json; <out>/prompts/<name>.json holds the prompts of each prompt file for the judge.
WISE's prompt files are not bundled (no license in PKU-YuanGroup/WISE): pass --prompts.
The judge (--judge-command or ${WISE_JUDGE_ENV}) runs once per prompt file with {{images}} (<out>), {{prompts}}
(<out>/prompts/<name>.json), {{out}} (<out>/judge/<name>_scores_results.jsonl, which it must write) and {{name}}
filled in, e.g. WISE's own judge (one line):
  --judge-command "python /path/WISE/vllm_eval.py --json_path {{prompts}} --image_dir {{images}}
      --output_dir {{images}}/judge --model Qwen3.5-35B-A3B --result_scores {{out}} --result_full {{out}}.full.json"
or WISE_legacy/gpt_eval.py (GPT-4o, the paper's protocol). Its records ('score' 0/1, or 'consistency',
'realism', 'aesthetic_quality' 0-2) are summarised per category with WISE's WiScore and overall weights into
<out>/summary.json."""


class _ScoreOnly(argparse.Action):
    """``--score-only DIR``: DIR is also the output folder (results.jsonl and summary.json are written there)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.out = values


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="benchmarks: GenEval / DPG-Bench / WISE layouts and scoring, "
                                     "reconstruction metrics")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    model_help = "'tiny', a preset, a saved pipeline folder, or (geneval, dpg) 'prior' / a toy prior folder"

    g = evs.add_parser("geneval", help="GenEval layout (+ toy scoring or the official scorer)",
                       description=GENEVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", help=model_help + " (required unless --score-only)")
    g.add_argument("--metadata", help="a GenEval-format JSONL; default: the toy GenEval prompts for toy models "
                                      "(the toy prior, toy-all-layers, toy-last-layer, any pipeline on the toy VLM), "
                                      "GenEval's own 553 prompts (bundled) for every other model")
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output folder (the layout; results.jsonl and summary.json)")
    where.add_argument("--score-only", metavar="DIR", action=_ScoreOnly,
                       help="generate nothing: score the images already in DIR in GenEval's layout "
                            "(<index:05d>/metadata.jsonl + samples/<k>.png), e.g. made by another model's own "
                            "script; results.jsonl and summary.json are written in DIR, and its provenance.json "
                            "records that the images came from elsewhere (parauni never adds images to them)")
    g.add_argument("--images-per-prompt", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=32, help="images per batch")
    g.add_argument("--limit", type=int, help="the first N prompts of each task (GenEval's overall score is the "
                                             "mean of the tasks), e.g. --limit 2 scores 12 prompts of 6 tasks")
    g.add_argument("--scorer", choices=GENEVAL_SCORERS, default="auto",
                   help="auto: the toy detector for toy models / toy metadata, else official; toy; native "
                        "(transformers Mask2Former + CLIP with GenEval's rules; GenEval-compatible, not official); "
                        f"official (${GENEVAL_SCORER_ENV} or printed instructions)")
    g.add_argument("--detector", help="--scorer native: Mask2FormerForUniversalSegmentation hub id or folder "
                                      "(COCO instance segmentation; default facebook/mask2former-swin-small-coco-"
                                      "instance)")
    g.add_argument("--clip", dest="clip", help="--scorer native: CLIPModel hub id or folder for the colour "
                                               "classifier (default openai/clip-vit-large-patch14, GenEval's ViT-L/14)")
    d = evs.add_parser("dpg", help="DPG-Bench: a 2x2 grid <item_id>.png per prompt, resumable; --score: VQA score")
    d.add_argument("--model", help=model_help + " (required unless --score scores the grids already in --out)")
    d.add_argument("--prompts", help="JSONL of {item_id, prompt} records (default: DPG-Bench's 1065 prompts, "
                                     "bundled)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--batch-size", type=int, default=16, help="images per batch (4 per prompt)")
    d.add_argument("--limit", type=int, help="the first N prompts of the file (DPG-Bench has no tasks)")
    d.add_argument("--score", action="store_true",
                   help="score the grids with DPG-Bench's method (questions with a dependency graph, 4 images per "
                        "grid): after generating with --model, or the grids already in --out without it")
    d.add_argument("--questions", metavar="CSV", help="--score: DPG-Bench's dpg_bench.csv (TencentQQGYLab/ELLA)")
    d.add_argument("--vqa", metavar="MODEL", help="--score: a transformers VQA model or VLM id / folder that answers "
                                                 "yes/no (BlipForQuestionAnswering, or an image-text-to-text model "
                                                 "with a chat template); the official mPLUG-large is not in "
                                                 "transformers")
    w = evs.add_parser("wise", help="WISE: <prompt_id>.png per prompt, resumable; a judge command scores them",
                       description=WISE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--model", required=True, help=model_help)
    w.add_argument("--prompts", required=True, help="a WISE prompt JSON file or a folder of them (WISE's "
                                                    "data_verified/, or one file of WISE_legacy/data/, whose "
                                                    "_rewrite files repeat the prompt ids; not bundled)")
    w.add_argument("--out", required=True, help="output folder (images, prompts/, judge/, summary.json)")
    w.add_argument("--batch-size", type=int, default=16, help="images per batch")
    w.add_argument("--limit", type=int, help="the first N prompts of each category")
    w.add_argument("--judge-command", metavar="CMD", help=f"run after generation, once per prompt file (default "
                                                          f"${WISE_JUDGE_ENV}); see the description")
    r = evs.add_parser("reconstruct", help="image -> VLM -> reconstruction: PSNR / SSIM / CLIP-sim table")
    r.add_argument("--model", action="append", required=True, help="'tiny', a preset or pipeline folder; repeat")
    r.add_argument("--images", required=True, help="folder of input images (unreadable files are skipped)")
    r.add_argument("--out", required=True, help="output folder: reconstructions, summary.json, table.md")
    r.add_argument("--clip", help="CLIPModel hub id or folder, 'toy' or 'toy:PATH' (toy alignment encoder; the "
                                  "default when every model is a toy model), or 'none'; default "
                                  "openai/clip-vit-large-patch14")
    r.add_argument("--batch-size", type=int, default=8)
    cfg = r.add_mutually_exclusive_group()
    cfg.add_argument("--cfg-prompt", metavar="TEXT",
                     help="instruction of the unconditional (CFG) branch, which keeps the input image; default "
                          "the conditional instruction 'Keep the image as it is.', as in OpenUni, so both "
                          "branches coincide and the guidance scale has no effect")
    cfg.add_argument("--cfg-text-only", action="store_true",
                     help="drop the image from the unconditional branch and use the text-only unconditional "
                          "prompt ('Generate an image.') instead")
    for p in (g, d, w, r):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance", type=float, help="CFG scale (default 4.5; the toy prior: its own)")
        p.add_argument("--resolution", type=int, help="square output side (default: the model's native size)")
        p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
        _add_dtype_option(p)
    from .toy.evaluation import add_overwrite_options

    for p in (g, d, w):
        add_overwrite_options(p)
    g.set_defaults(func=_run_eval_geneval)
    d.set_defaults(func=_run_eval_dpg)
    w.set_defaults(func=_run_eval_wise)
    r.set_defaults(func=_run_eval_reconstruct)

    rep = sub.add_parser("report", help="a self-contained HTML report (+ Markdown twin) of run folders")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", required=True, help="FILE.html; FILE.md and FILE_files/ are written beside it")
    rep.add_argument("--samples-per-task", type=int, default=4, help="GenEval prompts shown per task")
    rep.set_defaults(func=_run_report)


def _run_eval_geneval(args) -> None:
    from .eval.geneval_command import run
    from .utils.locks import hold_folder_lock

    with hold_folder_lock(args.out, "evaluation"):  # one evaluation per output folder
        run(args)


def _run_eval_dpg(args) -> None:
    from .eval.dpg import run
    from .utils.locks import hold_folder_lock

    with hold_folder_lock(args.out, "evaluation"):  # one evaluation per output folder
        run(args)


def _run_eval_wise(args) -> None:
    from .eval.wise import run

    run(args)


def _run_eval_reconstruct(args) -> None:
    from .eval.reconstruct import run

    run(args)


def _run_report(args) -> None:
    from .report import build_report

    html_path, md_path = build_report(args.runs, args.out, samples_per_task=args.samples_per_task)
    print(f"wrote {html_path} and {md_path}")

# ---- end of evaluation and reports -------------------------------------------------------------------------------


# ---- layer analysis: `parauni analyze layers` ---------------------------------------------------------------------

def _add_analyze(sub) -> None:
    an = sub.add_parser("analyze", help="analyses of a model: how rewards respond to each VLM layer group")
    ans = an.add_subparsers(dest="analyze_command", required=True)
    p = ans.add_parser("layers", help="perturb or drop one layer group at a time; each reward's change vs baseline",
                       description="Writes layer_response.json, layer_response.md and layer_response.png in --out.")
    p.add_argument("--model", required=True, help="'tiny', a preset, or a saved pipeline folder")
    p.add_argument("--prompts", required=True, help="a text file (one prompt a line) or a GenEval-format JSONL "
                                                    "(its records are passed to the rewards as metadata)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rewards", nargs="+", metavar="NAME=WEIGHT",
                   help="rewards by name or package.module:Factory (default: toy_alignment toy_quality toy_geneval); "
                        "with two or more, a 'total' column reports the weighted sum")
    p.add_argument("--reward-options", metavar="JSON",
                   help='per reward, factory options as JSON, e.g. \'{"aesthetic": {"head": "PATH"}}\'')
    p.add_argument("--groups", default="thirds", choices=["thirds", "per-layer"])
    p.add_argument("--mode", default="both", choices=["perturb", "drop", "both"])
    p.add_argument("--scale", type=float, default=1.0, help="perturb: noise std in units of the group's state std")
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="the first N prompts of each task (GenEval-format JSONL with 'tag'); "
                                             "of a plain text file, the first N prompts")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    _add_dtype_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (generations, denoising steps)")
    p.set_defaults(func=_run_analyze_layers)


def _run_analyze_layers(args) -> None:
    from .analysis import run

    run(args)

# ---- end of layer analysis ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parauni", description="ParaUni: all-layer VLM conditioning for SANA")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_eval(sub)
    _add_analyze(sub)
    d = sub.add_parser("demo", help="the main job: an end-to-end run on a CPU")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--images-per-prompt", type=int, default=1)
    d.add_argument("--rl-epochs", type=int, default=100, help="epochs of the stage-III phase (DiffusionNFT)")
    d.add_argument("--limit", type=int, help="first N toy GenEval prompts of each task only (quick checks)")
    d.set_defaults(func=lambda a: _generate().run_demo(a))
    from .train.commands import add_parsers as add_train_parsers

    add_train_parsers(sub)
    from .rl.grpo import add_parser as add_grpo_parser

    add_grpo_parser(sub)
    sub.choices["grpo"].set_defaults(func=_run_grpo)
    toy = sub.add_parser("toy", help="the toy world: pretrain its models, evaluate").add_subparsers(
        dest="toy_command", required=True)
    from .toy import evaluation as toy_eval
    from .toy import reproduce as toy_reproduce
    from .toy import train_prior as toy_prior
    from .toy import train_rewards as toy_rewards
    from .toy import train_vlm as toy_vlm

    for module in (toy_vlm, toy_prior, toy_rewards, toy_eval, toy_reproduce):
        module.add_parser(toy)  # each registers its command and its handler, as every other command module
    _add_threads_option(parser)
    _add_debug_option(parser)
    _check_options(parser)
    return parser


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on every command (torch's intra-op CPU threads; on a config-driven run also
    ``train.threads=N``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_threads_option(sub)
            return
    if "--threads" in parser._option_string_actions:  # a command with its own --threads (toy pretraining)
        return
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice); "
                                                    "run one heavy job per core group, not several on the same cores")


def _set_threads(args: argparse.Namespace) -> None:
    n = getattr(args, "threads", None)
    if n is None:
        return
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, f"train.threads={n}"]


# ---- bad input: argparse types with ranges, one-line errors --------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (printed by :func:`main`) instead of exiting."""

    def error(self, message: str):
        err = UsageError(f"{message} (see '{self.prog} --help')")
        err.prog = self.prog  # type: ignore[attr-defined]
        raise err


def _add_debug_option(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``--debug`` before or after the command: errors show their Python traceback."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug_option(sub, top=False)
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="on an error, show the Python traceback instead of one line")


# every integer option is >= 1 unless listed here (by option, or by command and option); floats are finite
INT_OPTIONS: dict[str | tuple[str, str], Check] = {
    "seed": SEED, "seeds": SEED, "warmup": NON_NEGATIVE_INT, "workers": NON_NEGATIVE_INT,
    "eval_every": NON_NEGATIVE_INT, "eval_images": NON_NEGATIVE_INT, "samples_per_task": NON_NEGATIVE_INT,
    "height": RESOLUTION, "width": RESOLUTION, "resolution": RESOLUTION,
    ("parauni toy pretrain-prior", "steps"): NON_NEGATIVE_INT,  # 0: by --minutes only
    ("parauni toy pretrain-prior", "ae_steps"): NON_NEGATIVE_INT,
}
FLOAT_OPTIONS: dict[str | tuple[str, str], Check] = {
    "guidance": number(0.0), "lr": number(0.0, lo_open=True), "ae_lr": number(0.0, lo_open=True),
    "minutes": number(0.0, lo_open=True), "ae_minutes": number(0.0, lo_open=True),
    "flow_shift": number(0.0, lo_open=True), "scale": number(0.0, 100.0, lo_open=True), "weight_decay": number(0.0),
    "ema": number(0.0, 1.0, hi_open=True), "uncond_prob": number(0.0, 1.0, hi_open=True),
    "template_prob": number(0.0, 1.0),
}


def _device(value: str) -> str:
    """``--device``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:0, got {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{value}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {value!r}; use cpu or cuda")
    return value


def _image_file(value: str) -> str:
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder, not an image file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


def _folder(value: str) -> str:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a file, not a folder")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


def _option_type(prog: str, action: argparse.Action):
    dest = action.dest
    if action.type is int:
        return arg_type(INT_OPTIONS.get((prog, dest)) or INT_OPTIONS.get(dest) or POSITIVE_INT, int)
    if action.type is float:
        return arg_type(FLOAT_OPTIONS.get((prog, dest)) or FLOAT_OPTIONS.get(dest) or number(), float)
    if action.type is None and action.option_strings:
        if dest == "device":
            return _device
        if dest == "image":
            return _image_file
        if dest == "images" and prog == "parauni eval reconstruct":
            return _folder
        if dest in ("prompt", "model", "out"):
            return arg_type(nonempty_str(), str)
    return None


def _check_options(parser: argparse.ArgumentParser) -> None:
    """Give every numeric option of every command a range-checking ``type`` (see :data:`INT_OPTIONS`), and
    ``--device``, ``--image``, ``--prompt`` / ``--model`` / ``--out`` their checks; errors read
    ``argument --steps: expected an integer >= 1, got '0'``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _check_options(sub)
            continue
        numeric = action.type in (int, float)
        new = _option_type(parser.prog, action)
        if new is not None:
            action.type = new
            check = getattr(new, "check", None)
            if numeric and check is not None and action.help != argparse.SUPPRESS:  # the range in --help
                action.help = f"{action.help} ({check.desc})" if action.help else check.desc


def _run_grpo(args) -> dict:
    """``parauni grpo``: the config and its reward names checked before any model is built."""
    from .rl.config import check_reward_names, load_grpo_config
    from .rl.grpo import run

    check_reward_names(load_grpo_config(args.config, args.overrides).rewards)
    return run(args)


OOM_HINT = ("lower the batch size (--batch-size; train.batch_size, optim.train_batch or sampling.rollout_batch in "
            "a config) or the resolution (--resolution / --height / --width; data.resolution)")


def _bad_input_message(err: BaseException) -> str | None:
    """The one-line message for an error caused by the input, or ``None`` for a bug (keeps its traceback).

    Bad input is the project's own errors (:mod:`parauni.errors`: ``UsageError``, ``ConfigError`` and their
    kinds), a missing file or folder, a path without permission, invalid YAML and running out of memory. A
    ``ValueError``, ``KeyError`` or ``OSError`` from anywhere else is a bug: an input check raises one of the
    project's errors."""
    if isinstance(err, (UsageError, ConfigError)):
        return str(err)
    if isinstance(err, IsADirectoryError):
        return f"{err.filename!r} is a folder, not a file" if err.filename else str(err)
    if isinstance(err, NotADirectoryError):
        return f"{err.filename!r} is not a folder" if err.filename else str(err)
    if isinstance(err, FileNotFoundError):
        return f"{err.filename!r} does not exist" if err.filename else str(err)
    if isinstance(err, PermissionError) and err.filename:
        return f"{err.filename!r}: permission denied; give a path you can write (or read)"
    if _is_disk_full(err):
        where = getattr(err, "filename", None)
        return (f"no space left on device{f' at {where!r}' if where else ''}: free some space or write elsewhere, then "
                "rerun (a checkpoint, export or image is written under a temporary name and renamed when complete, so "
                "what was finished is kept and nothing half-written stands under a final name; with --resume a run "
                "goes on from its last complete checkpoint)")
    if isinstance(err, MemoryError) or _is_out_of_memory(err):
        first = (str(err).strip().splitlines() or ["no more memory"])[0]
        return f"out of memory ({first}); {OOM_HINT}"
    yaml_error = sys.modules.get("yaml")
    if yaml_error is not None and isinstance(err, yaml_error.YAMLError):
        return f"invalid YAML: {' '.join(str(err).split())}"
    return None


def _is_disk_full(err: BaseException) -> bool:
    """A write that failed for lack of space: ``OSError`` ENOSPC, or the messages of torch's zip writer
    (``file write failed``) and safetensors (``No space left on device``), which carry no errno."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or (isinstance(err, RuntimeError) and "file write failed" in text)


BUG_REPORT = ("internal error: this is a bug in parauni, not a problem with your input; please report it (an issue "
              "in the project's tracker) with the command line and the traceback below")


# what an interrupted command leaves and how to continue it, by command (``parauni <command> [<subcommand>]``)
INTERRUPT_HINTS = {
    "train": "continue from the newest checkpoint with the same command plus --resume",
    "grpo": "continue from the newest checkpoint with the same command plus --resume",
    "eval geneval": "finished images are kept: rerun the same command with --resume to continue",
    "eval dpg": "finished grids are kept: rerun the same command with --resume to continue",
    "eval wise": "finished images are kept: rerun the same command with --resume to continue",
    "toy reproduce": "finished steps are kept: rerun the same command to continue",
    "export": "--out was left as it was: rerun the command",
    "report": "the previous report was left as it was: rerun the command",
}


def _interrupt_message(args: argparse.Namespace | None) -> str:
    if args is None:
        return "interrupted"
    sub = getattr(args, "eval_command", None) or getattr(args, "toy_command", None)
    key = f"{args.command} {sub}" if sub else args.command
    return f"interrupted; {INTERRUPT_HINTS.get(key, 'rerun the command to start again')}"


def _is_out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "DefaultCPUAllocator" in text)


def _generate():
    from . import generate

    return generate


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (:class:`UsageError`, :class:`ConfigError` and the other errors of
    :mod:`parauni.errors`, a missing file, invalid YAML, out of memory) prints one ``<prog>: error: <message>``
    line and returns 2; ``--debug`` shows the traceback instead. Other exceptions are bugs: a line asking for a
    bug report, then their traceback (re-raised). Ctrl-C prints one line saying how to continue and returns 130.
    Command-line errors found while parsing (an option out of range, a missing argument) exit with
    ``SystemExit(2)``, as argparse does, after the same one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known before parsing, which can fail too
    prog = "parauni"
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        prog = f"parauni {args.command}"
        # key=value overrides may follow options (``parauni train CFG --resume a.b=1``)
        if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        _set_threads(args)
        args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line saying how to continue, exit status 130 (as a shell reports it)
        if debug:
            raise
        print(f"\n{prog}: {_interrupt_message(args)}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted into bad input (one line) and bugs (re-raised)
        message = _bad_input_message(err)
        if message is None and not debug:
            print(f"{prog}: {BUG_REPORT}", file=sys.stderr)
        if message is None or debug:
            raise
        print(f"{getattr(err, 'prog', None) or prog}: error: {message}", file=sys.stderr)
        if isinstance(err, UsageError) and hasattr(err, "prog"):  # found by argparse: exit as argparse does
            raise SystemExit(2) from None
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
