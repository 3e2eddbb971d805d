"""The documentation's code blocks and generated references against the code.

* Blocks marked ``<!-- run -->`` (the line before the fence) run: ```` ```bash ```` blocks hold only ``parauni``
  commands, each run in-process through :func:`parauni.cli.main` in a temporary folder and expected to succeed;
  ```` ```python ```` blocks are executed there.
* Every other ``bash`` block is parsed: each ``parauni <command> --flag`` must be a command of
  ``build_parser()`` that has that flag, and each ``section.key=value`` a key of a config root.
* Every ``python`` block compiles.
* The generated configuration reference lists every key of every config root (counted independently, through
  OmegaConf), and the CLI reference every command.
* The README stays one screen: at most 200 lines, its figure and its links present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from parauni import registry
from parauni.cli import main
from parauni.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import docs_reference  # noqa: E402 - the generators of the reference pages, in tools/

PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[a-z]*)\s*$")
RUN_MARK = "<!-- run -->"
KEY = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)=")
# the stage-III command's earlier name: where a checkout has only one of the two, the other is checked as it
SAME_COMMAND = {"rl": "grpo", "grpo": "rl"}


def blocks(path: Path) -> list[tuple[str, str, bool, int]]:
    """``(language, code, marked to run, line)`` of every fenced block of a Markdown file."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m["lang"]:
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            before = [x.strip() for x in lines[max(0, i - 2):i] if x.strip()]
            code = "\n".join(x[len(m["indent"]):] for x in lines[i + 1:j])
            out.append((m["lang"], code, bool(before) and before[-1] == RUN_MARK, i + 1))
            i = j
        i += 1
    return out


def commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block as token lists (continuations joined, comments dropped, split at
    ``&&``, ``;`` and ``|``)."""
    text = code.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        cmd: list[str] = []
        for tok in lexer:
            if tok and set(tok) <= set("|&;"):
                out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        out.append(cmd)
    return [c for c in out if c]


def parauni_argv(cmd: list[str]) -> list[str] | None:
    """The arguments after ``parauni`` (``parauni ...``, ``ENV=x parauni ...``, ``... -m parauni ...``)."""
    for k, tok in enumerate(cmd):
        if tok == "parauni" and (k == 0 or cmd[k - 1] == "-m" or all("=" in t for t in cmd[:k])):
            return cmd[k + 1:]
    return None


@pytest.fixture(scope="module")
def flags():
    return docs_reference.command_flags()


@pytest.fixture(scope="module")
def keys():
    return docs_reference.all_config_keys()


def command_of(argv: list[str], flags) -> tuple[tuple[str, ...], list[str]]:
    """The longest command path at the start of ``argv`` (the earlier name of a renamed command counts) and the
    rest."""
    path: tuple[str, ...] = ()
    for tok in argv:
        for name in (tok, SAME_COMMAND.get(tok)):
            if name and (*path, name) in flags:
                path = (*path, name)
                break
        else:
            break
    return path, argv[len(path):]


ALL_BLOCKS = [(p, *b) for p in PAGES for b in blocks(p)]
BASH = [b for b in ALL_BLOCKS if b[1] == "bash"]


@pytest.mark.parametrize("page,lang,code,run,line", BASH, ids=[f"{b[0].name}:{b[4]}" for b in BASH])
def test_bash_blocks_name_real_commands_flags_and_keys(page, lang, code, run, line, flags, keys):
    where = f"{page.relative_to(ROOT)}:{line}"
    for cmd in commands(code):
        argv = parauni_argv(cmd)
        if argv is not None:
            path, rest = command_of(argv, flags)
            assert path, f"{where}: 'parauni {' '.join(argv[:2])}' is not a parauni command"
            for tok in rest:
                flag = tok.strip("[]").split("=", 1)[0]
                if flag.startswith("--"):
                    assert flag in flags[path], f"{where}: parauni {' '.join(path)} has no option {flag}"
        if argv is not None or any(t.endswith(".py") for t in cmd):  # parauni and the benchmark scripts
            for tok in cmd:
                if (m := KEY.match(tok)) and not tok.startswith("--"):
                    assert m[1] in keys, f"{where}: {m[1]} is not a config key"


PY = [b for b in ALL_BLOCKS if b[1] == "python"]


@pytest.mark.parametrize("page,lang,code,run,line", PY, ids=[f"{b[0].name}:{b[4]}" for b in PY])
def test_python_blocks_compile(page, lang, code, run, line):
    compile(code, f"{page.name}:{line}", "exec")


RUN = [b for b in ALL_BLOCKS if b[3]]


def test_some_blocks_are_marked_to_run():
    assert {b[1] for b in RUN} == {"bash", "python"}, "the docs should keep runnable bash and python examples"


@pytest.mark.parametrize("page,lang,code,run,line", RUN, ids=[f"{b[0].name}:{b[4]}" for b in RUN])
def test_marked_blocks_run(page, lang, code, run, line, tmp_path, monkeypatch):
    where = f"{page.relative_to(ROOT)}:{line}"
    monkeypatch.chdir(tmp_path)
    if lang == "python":
        registry.load_plugins()  # first, so that the snapshot holds the plugins' names
        tables = [v for v in vars(registry).values() if isinstance(v, registry.Registry)]
        saved = [(t, dict(t._entries), list(t._defaults)) for t in tables]
        try:  # an example may register names: the other tests in this process must not see them
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, where, "exec"), {"__name__": "__main__"})
        finally:
            for t, entries, defaults in saved:
                t._entries, t._defaults = entries, defaults
        return
    assert lang == "bash", f"{where}: only bash and python blocks can run"
    for cmd in commands(code):
        argv = parauni_argv(cmd)
        assert argv is not None and cmd[0] == "parauni", f"{where}: a runnable bash block holds parauni commands only"
        assert main([*argv, "--threads", "1"]) == 0, f"{where}: {' '.join(cmd)} failed"
    assert any(tmp_path.iterdir()), f"{where}: the commands wrote nothing"


def _omegaconf_keys(node, prefix: str = "") -> set[str]:
    """Every leaf key of a structured config, as OmegaConf sees it (a section typed ``Section | None`` and set to
    None counts with its keys)."""
    out = set()
    for k in node.keys():
        child = node._get_node(k)
        ref = child._metadata.ref_type
        if OmegaConf.is_dict(child) and dataclasses.is_dataclass(ref):
            out |= _omegaconf_keys(OmegaConf.structured(ref) if child._is_none() else child, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_config_reference_lists_every_key_of_every_root():
    page = docs_reference.config_reference()
    roots = [r for rs in docs_reference.config_roots().values() for r in rs]
    assert len(roots) >= 5  # stages I/II, stage III, the toy world's three pre-training configs
    for root in roots:
        for key in _omegaconf_keys(OmegaConf.structured(root)):
            assert f"| `{key}` |" in page, f"{root.__name__}: {key} missing from the configuration reference"
    stray = [k for k in docs_reference.NOTES if not any(
        key == k or key.endswith("." + k) for key in docs_reference.all_config_keys())]
    assert not stray, f"notes for keys that no longer exist: {stray}"


def test_cli_reference_lists_every_command():
    page = docs_reference.cli_reference()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"`parauni {name}`" in page
        assert all(f"`{s}`" in page for a in p._actions for s in a.option_strings if s not in ("-h", "--help"))


def test_readme_is_one_screen_with_its_figure_and_links():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert images and all((ROOT / im).is_file() for im in images)
    generated = {f"docs/{p}" for p in docs_reference_pages()}
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file() or link in generated, f"README links to a missing page {link}"


def test_nav_pages_exist():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]

    def pages(entries):
        for e in entries:
            v = next(iter(e.values())) if isinstance(e, dict) else e
            yield from (pages(v) if isinstance(v, list) else [v])

    generated = set(docs_reference_pages())
    for page in pages(nav):
        assert (ROOT / "docs" / page).is_file() or page in generated, f"mkdocs.yml names a missing page {page}"


def docs_reference_pages() -> list[str]:
    """The pages the build hook generates (``reference/*.md``)."""
    text = (ROOT / "tools" / "mkdocs_hooks.py").read_text()
    return re.findall(r'"(reference/[a-z_]+\.md)"', text)
