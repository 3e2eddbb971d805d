"""The generated pages of the documentation: the configuration reference (every key of every config root, from the
dataclass schemas) and the command-line reference (from ``parauni.cli.parser.build_parser()``).

Both walk the code at build time (``tools/mkdocs_hooks.py`` adds them to the site), so they cannot drift:

* a config root is a dataclass with a ``validate()`` method defined in one of :data:`CONFIG_MODULES`; its keys are
  found by walking ``dataclasses.fields`` (a field whose type is a dataclass is a section), whatever the sections
  are called;
* a key's default is its field's default (or its factory's value), what it accepts is the description of its
  declared check (``parauni.train.schema.setting``; a field without one: what its annotation implies), and its
  meaning is the comment beside or above the field in the source, else the section's docstring.

Run ``python tools/docs_reference.py config|cli`` to print a page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from functools import cache
from typing import Any

# module -> the heading of its roots' part of the page
CONFIG_MODULES = {
    "parauni.train.config": "Stages I and II (`parauni train`)",
    "parauni.rl.config": "Stage III (`parauni rl`)",
    "parauni.toy.config": "Toy world pre-training (`parauni toy pretrain-vlm`, `pretrain-prior`, `train-rewards`)",
}


# What a key means where its field has no comment in the source, by leaf name (``section.name`` wins over
# ``name``). A comment added beside the field replaces the entry here; tests/test_docs.py checks that every entry
# still names a real key.
NOTES = {
    "adv_clip": "advantages are clipped to [-adv_clip, adv_clip]",
    "ae_lr": "learning rate of the autoencoder phase",
    "batch_size": "samples per optimizer step",
    "train.batch_size": "samples per optimizer step",
    "betas": "AdamW's (beta1, beta2)",
    "caption_channels": "width of the caption features the prior's transformer reads",
    "caption_key": "json: the key of the caption in an annotation record",
    "clip_range": "PPO-style clipping of the probability ratio: [1 - clip_range, 1 + clip_range]",
    "device": "where it trains (cpu, cuda)",
    "ema": "decay of the weights' exponential moving average",
    "ldam.enabled": "switch LDAM on (its noise on the layer group of a stalled reward)",
    "epochs": "epochs of the run (one epoch: rollouts of prompts.per_epoch prompts x sampling.group_size images, "
              "then the update)",
    "eps": "AdamW's epsilon",
    "eval_geneval": "evaluate the trained model at the end with the registered default evaluation (GenEval-style)",
    "eval_images_per_prompt": "images per prompt in that evaluation",
    "eval_steps": "sampling steps of the evaluation",
    "finetune": "lora: a LoRA on the transformer (the references' choice); full: every transformer weight",
    "fp16": "save the weights in float16 (as shipped)",
    "gamma0": "scale of LDAM's noise: gamma = gamma0 x (range of the window's gradient norms + range of its rewards)",
    "grad_accum": "micro-batches accumulated into one optimizer step (batch_size is the global batch)",
    "guidance_scale": "classifier-free guidance of the rollouts (DiffusionNFT trains a guidance-1 model: 1)",
    "hidden": "width of the prior's transformer",
    "data.kind": "the dataset layout (see the section's description above)",
    "latent_channels": "channels of the tiny autoencoder's latents",
    "layers": "transformer layers",
    "log_every": "steps between log lines (metrics.jsonl, the logger)",
    "lora_alpha": "LoRA scale numerator (the update is alpha / rank x B A)",
    "lora_rank": "LoRA rank",
    "lora_targets": "the transformer's modules that get a LoRA (attention projections by default)",
    "lr": "learning rate (the peak, after any warm-up)",
    "max_grad_norm": "gradients are clipped to this global norm",
    "mid_eval_examples": "held-out questions scored at each intermediate evaluation",
    "min_lr_ratio": "the cosine decays to lr x min_lr_ratio at the last step (1: constant after the warm-up)",
    "num_workers": "DataLoader processes (results do not depend on it)",
    "output_dir": "the run folder: checkpoints, metrics.jsonl, logs, config.yaml",
    "prompts.path": "kind=file: a .txt file (one prompt a line) or a GenEval-format .jsonl",
    "ldam.patience": "epochs both stall counters must reach before LDAM's noise switches on",
    "resolution": "image side in pixels (a multiple of the model's VAE factor x patch size)",
    "seed": "seed of every random stream of the run",
    "source": "what to build: a registered model builder, tiny, a preset name or a saved pipeline folder",
    "steps": "optimizer steps of the run",
    "text_depth": "layers of the prior's own text encoder",
    "text_width": "width of the prior's own text encoder",
    "threads": "torch CPU threads (None: torch's own choice)",
    "vae": "preset: hub id or local folder overriding the preset's VAE",
    "vae_width": "width of the tiny autoencoder",
    "warmup": "linear warm-up steps",
    "warmup_steps": "linear warm-up in optimizer steps",
    "weight_decay": "AdamW weight decay (on parameters with 2 or more dimensions)",
    "ldam.window": "epochs of reward and gradient-norm history LDAM compares",
    "kl_beta": "weight of the KL term to the reference policy (0: no reference forward)",
}


def note(key: str) -> str:
    """The :data:`NOTES` entry for a dotted key (``section.name`` first, then ``name``)."""
    parts = key.split(".")
    return NOTES.get(".".join(parts[-2:]), NOTES.get(parts[-1], ""))


def rst_to_md(text: str) -> str:
    """Docstring reST literals and roles as Markdown code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


# ---- configuration ------------------------------------------------------------------------------------------------

def config_roots() -> dict[str, list[type]]:
    """module name -> its root config dataclasses (dataclasses defined there that have a ``validate`` method)."""
    roots: dict[str, list[type]] = {}
    for name in CONFIG_MODULES:
        module = importlib.import_module(name)
        roots[name] = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                       if dataclasses.is_dataclass(obj) and obj.__module__ == name
                       and callable(getattr(obj, "validate", None))]
        roots[name].sort(key=lambda c: inspect.getsourcelines(c)[1])
    roots["parauni.rl.config"] += algorithm_sections()
    return roots


def algorithm_sections() -> list[type]:
    """One root per stage-III algorithm that has its own config section (the section exists only in a config that
    chooses that algorithm): a dataclass holding just that section, named after the algorithm's class."""
    from parauni.rl.algorithm import importable_algorithms, option  # the registry fills at first use

    out = []
    for name, algo in importable_algorithms().items():
        section = option(algo, "section")
        if section is None:
            continue
        doc = (f"The `{section}` section: present only in a config with `algorithm: {name}` (a key of it under "
               f"another algorithm is refused). Its defaults for the shared keys are in the stage III guide.")
        out.append(dataclasses.make_dataclass(f"{algo.__name__}Section", [
            (section, algo.Config, dataclasses.field(default_factory=algo.Config))], namespace={"__doc__": doc}))
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment beside it (same line) or the comment lines right above it, in ``cls``'s source."""
    try:
        lines, start = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    code_lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        same = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        above = []
        n = node.lineno - 1
        while n in comments and code_lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(above + same).strip()
        if text:
            out[node.target.id] = text
    return out


def _comment(cls: type, name: str) -> str:
    """The comment of field ``name``, looked up through the classes ``cls`` inherits it from."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in _field_comments(klass):
            return _field_comments(klass)[name]
    return ""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        try:
            return f.default_factory()
        except Exception as err:  # noqa: BLE001 - a factory that needs a missing plugin: say so
            return f"(set at run time: {err})"
    return "(required)"


def _accepts(cls: type, name: str) -> str:
    from parauni.train import schema

    check = None
    if hasattr(schema, "field_check"):
        check = schema.field_check(cls, name)
    else:  # older layouts: the check declared beside the field only
        check = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("check")
    return check.desc if check is not None else "anything"


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    # dataclasses give undocumented classes their signature as docstring
    return "" if doc.startswith(f"{cls.__name__}(") else rst_to_md(" ".join(doc.split()))


def _section_type(tp: Any) -> type | None:
    """The dataclass of a section field (``Section`` or ``Section | None``), else ``None`` (a leaf)."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def config_keys(root: type, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """Every leaf key of ``root`` as ``(dotted key, the dataclass that holds it, its field)``, in source order."""
    out = []
    hints = _hints(root)
    for f in dataclasses.fields(root):
        tp = _section_type(hints.get(f.name))
        if tp is not None:
            out += config_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", root, f))
    return out


def all_config_keys() -> set[str]:
    """Every dotted key of every config root."""
    return {key for roots in config_roots().values() for root in roots for key, _, _ in config_keys(root)}


def _cell(text: Any) -> str:
    s = text if isinstance(text, str) else repr(text)
    return s.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    s = repr(value) if not isinstance(value, str) or not value.startswith("(") else value
    if s.startswith("(set at run time") or s == "(required)":
        return s
    return "`" + s.replace("|", "\\|").replace("`", "'") + "`"


def config_reference() -> str:
    parts = ["# Configuration reference", "",
             "Generated from the config dataclasses when the site is built (`tools/docs_reference.py`): every key "
             "of every config root, its default, what it accepts (the check declared beside the field; a value "
             "outside it stops the command with one line naming the key) and its meaning (the comment beside the "
             "field in the source, or the section's docstring). Set a key in a YAML file (`section: {key: value}`) "
             "or on the command line as `section.key=value`; see [Configs and overrides](../guides/training.md#configs"
             "-and-overrides). A default that a plugin chooses (the model source, data kind, prompt source and "
             "rewards) shows the installed plugins' choice (the toy world's).", ""]
    for module, roots in config_roots().items():
        parts += [f"## {CONFIG_MODULES[module]}", "", f"Module `{module}`.", ""]
        for root in roots:
            if len(roots) > 1:
                parts += [f"### `{root.__name__}`", ""]
            if _doc(root):
                parts += [_doc(root), ""]
            sections: dict[str, list] = {}
            for key, holder, f in config_keys(root):
                sections.setdefault(key.rsplit(".", 1)[0] if "." in key else "", []).append((key, holder, f))
            level = "####" if len(roots) > 1 else "###"
            for section, keys in sections.items():
                holder = keys[0][1]
                parts += [f"{level} `{section}` ({root.__name__})" if section else f"{level} top level "
                          f"({root.__name__})", ""]
                if section and _doc(holder):
                    parts += [_doc(holder), ""]
                parts += ["| key | default | accepts | meaning |", "|---|---|---|---|"]
                for key, cls, f in keys:
                    parts.append(f"| `{key}` | {_code(_default(f))} | {_cell(_accepts(cls, f.name))} | "
                                 f"{_cell(rst_to_md(_comment(cls, f.name)) or note(key))} |")
                parts.append("")
    return "\n".join(parts)


# ---- command line -------------------------------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, list[str], str]]:
    """name -> (parser, aliases, help) of a parser's sub-commands (aliases folded into their command)."""
    out: dict[str, tuple[argparse.ArgumentParser, list[str], str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: dict[int, str] = {}
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    out[seen[id(sub)]][1].append(name)
                else:
                    seen[id(sub)] = name
                    out[name] = (sub, [], helps.get(name, ""))
    return out


def walk_commands(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """``(command path, parser, aliases, help)`` of every command and sub-command, depth first."""
    if parser is None:
        from parauni.cli.parser import build_parser

        parser = build_parser()
    for name, (sub, aliases, help_) in _subcommands(parser).items():
        yield (*path, name), sub, aliases, help_
        yield from walk_commands(sub, (*path, name))


def command_flags() -> dict[tuple[str, ...], set[str]]:
    """command path (with aliases as their own paths) -> every option string it accepts."""
    out = {}
    for path, sub, aliases, _ in walk_commands():
        flags = {s for a in sub._actions for s in a.option_strings}
        for p in (path, *[(*path[:-1], a) for a in aliases]):
            out[p] = flags
    return out


def cli_reference() -> str:
    parts = ["# Command-line reference", "",
             "Generated from `parauni.cli.parser.build_parser()` when the site is built (`tools/docs_reference.py`)."
             " Every command also takes `--threads N` (torch's CPU threads) and `--debug` (show the traceback of an "
             "error instead of one line). Bad input stops a command with one line and exit status 2.", ""]
    for path, sub, aliases, help_ in walk_commands():
        parts += [f"{'#' * min(len(path) + 1, 4)} `parauni {' '.join(path)}`", ""]
        if aliases:
            spelled = ", ".join("`parauni " + " ".join((*path[:-1], a)) + "`" for a in aliases)
            parts += [f"Also spelled: {spelled}.", ""]
        if help_:
            parts += [help_[0].upper() + help_[1:] + ("" if help_.endswith(".") else "."), ""]
        if sub.description and sub.description != help_:
            parts += [" ".join(sub.description.split()), ""]
        if _subcommands(sub):
            continue
        usage = sub.format_usage().replace("usage: ", "", 1).strip()
        parts += ["```text", usage, "```", ""]
        rows = []
        for a in sub._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
                continue
            name = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`"
            default = "" if a.default in (None, argparse.SUPPRESS, False) or a.option_strings == [] else \
                _code(a.default)
            rows.append(f"| {name} | {default} | {_cell(' '.join((a.help or '').split()))} |")
        if rows:
            parts += ["| argument | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(config_reference() if sys.argv[1:] == ["config"] else cli_reference())
