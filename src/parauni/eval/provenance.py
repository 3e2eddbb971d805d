"""Evaluation provenance: what made the images of a benchmark folder, so that a rerun never mixes models.

A generated benchmark folder (GenEval's layout, DPG-Bench's grids) holds ``provenance.json``: the model (its
name or path, a SHA-256 over the weights that change between checkpoints, the identity of the frozen parts),
the sampler settings (steps, guidance, resolution), the seed rule, images per prompt and the prompts (the
metadata file's hash, the per-task limit).  A later run into the same folder compares its own record with
the stored one (:func:`differences`) and decides (:func:`decide`):

* ``resume`` (the default): continue, keeping finished images, only when everything matches; otherwise
  refuse with a message that names each setting that differs;
* ``overwrite``: remove the generated files and regenerate everything;
* ``refresh``: keep the images when everything matches, regenerate everything when not (the end-of-run
  evaluations of ``parauni train`` and ``parauni grpo``, whose folder belongs to the run).

The weights hash covers the conditioner and the transformer (the parts training changes) byte for byte; the
VLM and the VAE are frozen and identified by their class, their config and where they were loaded from.

Images made elsewhere and only scored here (``parauni eval geneval --score-only DIR``) get an external record
(:func:`external_record`: ``source: "external"``, no model, a hash of the image files); parauni never adds its own
images to such a folder (:func:`decide` refuses to resume into it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from .. import __version__
from ..errors import UsageError

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
MODES = ("resume", "overwrite", "refresh")
# recorded for the reader, not compared: they do not change the images (or only by float rounding)
# (``metadata``: the prompt file's path; its content is compared through ``metadata_sha256``)
INFO_KEYS = frozenset({"model", "created", "parauni_version", "batch_size", "device", "outputs", "metadata"})
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def modules_sha256(modules: Iterable[tuple[str, torch.nn.Module]]) -> str:
    """SHA-256 over the state dicts of ``(prefix, module)`` pairs: every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for prefix, module in modules:
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{prefix}.{name}|{t.dtype}|{t.numel()}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _where(path: str) -> str:
    """A load path, relative to the installed package when it lies inside it (weights shipped with a plugin)."""
    if not path:
        return ""
    try:
        return "parauni:" + Path(path).resolve().relative_to(_PACKAGE_ROOT).as_posix()
    except (ValueError, OSError):
        return str(path)


def frozen_identity(module) -> str | None:
    """``class@where#config-hash`` of a frozen component (VLM, VAE), or ``None`` without one."""
    if module is None:
        return None
    config = getattr(module, "config", None)
    if config is None:
        return type(module).__name__
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    where = _where(str(data.pop("_name_or_path", "") or getattr(config, "_name_or_path", "") or ""))
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{type(module).__name__}@{where}#{digest}"


def model_identity(model) -> dict:
    """``weights_sha256``, ``vlm``, ``vae`` of a ``ParaUniPipeline`` or a prior (a registered generator's model with
    a text encoder, a transformer and a VAE).

    Pipeline: the conditioner and the transformer are hashed; the frozen VLM and VAE identified.  Prior: its text
    encoder and transformer are hashed (it has no VLM)."""
    if hasattr(model, "conditioner"):  # a ParaUniPipeline
        weights = modules_sha256([("conditioner", model.conditioner), ("transformer", model.transformer)])
        return {"weights_sha256": weights, "vlm": frozen_identity(model.vlm), "vae": frozen_identity(model.vae)}
    if hasattr(model, "text_encoder"):  # a prior
        weights = modules_sha256([("text_encoder", model.text_encoder), ("transformer", model.transformer)])
        return {"weights_sha256": weights, "vlm": None, "vae": frozen_identity(model.vae)}
    raise TypeError(f"cannot identify the weights of a {type(model).__name__}; expected a ParaUniPipeline or a prior "
                    "(text_encoder, transformer, vae)")


def text_sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def records_sha256(records: Iterable[dict]) -> str:
    """SHA-256 of prompt records, one canonical JSON line each (independent of the file's formatting)."""
    return text_sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def make_record(*, layout: str, model: str, identity: dict, steps: int, guidance: float | None, seed: int,
                seed_rule: str, resolution: int | None, images_per_prompt: int, metadata: str,
                metadata_sha256: str, limit: int | None, limit_rule: str, prompts: int,
                **info) -> dict:
    """The provenance record of a benchmark run (``info``: extra keys, e.g. ``batch_size``, not compared).

    ``guidance`` ``None`` means the model's default, taken from ``identity["default_guidance"]`` when the
    caller put it there (so ``--guidance 4.5`` and no ``--guidance`` on a pipeline are the same run)."""
    identity = dict(identity)
    default = identity.pop("default_guidance", None)
    guidance = default if guidance is None else guidance
    return {"layout": layout, "model": model, **identity, "steps": int(steps),
            "guidance": None if guidance is None else float(guidance), "seed": int(seed), "seed_rule": seed_rule,
            "resolution": resolution, "images_per_prompt": int(images_per_prompt), "metadata": metadata,
            "metadata_sha256": metadata_sha256, "limit": limit, "limit_rule": limit_rule, "prompts": int(prompts),
            "parauni_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}


def _short(value) -> str:
    """A value for a message; a SHA-256 hex digest shortened to its first 12 digits."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    return json.dumps(value)


def differences(recorded: dict, wanted: dict) -> list[str]:
    """``"key: <recorded> in the folder, <wanted> now"`` for every compared key that differs (pure)."""
    keys = [k for k in dict.fromkeys([*recorded, *wanted]) if k not in INFO_KEYS]
    return [f"{k}: {_short(recorded.get(k))} in the folder, {_short(wanted.get(k))} now"
            for k in keys if recorded.get(k) != wanted.get(k)]


def decide(recorded: dict | None, wanted: dict, has_outputs: bool, mode: str = "resume",
           where: str = "the output folder") -> str:
    """``"start"`` (nothing to keep), ``"resume"`` (keep finished outputs) or ``"overwrite"`` (remove them first).

    Raises ``ValueError`` in ``resume`` mode when the folder holds outputs of other settings, or outputs
    without a provenance record (pure: no file is read)."""
    if mode not in MODES:
        raise UsageError(f"provenance mode must be one of {MODES}, got {mode!r}")
    if mode == "overwrite":
        return "overwrite" if has_outputs or recorded is not None else "start"
    if recorded is not None and recorded.get("source") == EXTERNAL and wanted.get("source") != EXTERNAL:
        if mode == "refresh":
            return "overwrite"
        raise UsageError(f"{where} holds images made elsewhere (its {PROVENANCE_FILE} says source 'external': they "
                         "were scored with --score-only), and parauni does not add its own images to them; use "
                         "another --out, or --overwrite to replace them with this model's images")
    if recorded is None:
        if not has_outputs:
            return "start"
        if mode == "refresh":
            return "overwrite"
        raise UsageError(f"{where} already holds generated images but no {PROVENANCE_FILE}, so what made them is "
                         "unknown (an older parauni, or another tool); use another --out, or --overwrite to "
                         "regenerate every image")
    diff = differences(recorded, wanted)
    if not diff:
        return "resume"
    if mode == "refresh":
        return "overwrite"
    model = f" (model {recorded.get('model')!r} there, {wanted.get('model')!r} now)" \
        if recorded.get("model") != wanted.get("model") else ""
    raise UsageError(f"{where} was generated with other settings{model}: " + "; ".join(diff)
                     + ". Use another --out, or --overwrite to regenerate every image")


def add_overwrite_options(p) -> None:
    """``--overwrite`` / ``--resume`` of a generating benchmark command (the modes of :func:`decide`;
    every command that writes a provenance-checked folder takes them)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true",
                   help="regenerate every image in --out, whatever made the ones there")
    g.add_argument("--resume", action="store_true",
                   help="keep the images in --out (the default); refused unless --out's provenance.json matches "
                        "this run: model weights, steps, guidance, seed, resolution, images per prompt, prompts")


def read(folder: str | Path) -> dict | None:
    """The stored record of ``folder`` (``None`` without one)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:  # not JSON, a number too long, or not UTF-8 (a UnicodeDecodeError)
        raise UsageError(f"{path} is not valid JSON ({err}); delete it and pass --overwrite") from err
    if not isinstance(record, dict):
        raise UsageError(f"{path} is not a provenance record (a JSON object; it holds a {type(record).__name__}); "
                         "delete it and pass --overwrite")
    return record


def write(folder: str | Path, record: dict) -> Path:
    """Write ``record`` atomically to ``<folder>/provenance.json``."""
    path = Path(folder) / PROVENANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def prepare(folder: str | Path, record: dict, mode: str, has_outputs: Callable[[Path], bool],
            clear: Callable[[Path], None]) -> str:
    """Check ``folder`` against ``record`` (:func:`decide`), clear it if needed, store ``record``; returns the
    decision.  ``has_outputs`` / ``clear`` know the layout's generated files."""
    folder = Path(folder)
    recorded = read(folder)
    decision = decide(recorded, record, folder.is_dir() and has_outputs(folder), mode, str(folder))
    if decision == "overwrite":
        why = "; ".join(differences(recorded, record)) if recorded else "no provenance record"
        logger.info("regenerating every image in %s (%s)", folder, why if mode == "refresh" else "--overwrite")
        clear(folder)
    if decision == "resume" and recorded is not None:
        record = {**record, "created": recorded.get("created", record.get("created"))}
    write(folder, record)
    return decision


EXTERNAL = "external"


def files_sha256(root: str | Path, files: Sequence[str | Path]) -> str:
    """SHA-256 over files: each one's path relative to ``root`` and its bytes, in the order given."""
    h = hashlib.sha256()
    root = Path(root)
    for f in files:
        h.update(f"{Path(f).relative_to(root).as_posix()}\n".encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def external_record(*, layout: str, root: str | Path, images: Sequence[str | Path], records: Sequence[dict],
                    **info) -> dict:
    """The record of a folder whose images parauni did not generate (scored only): ``source: "external"``,
    ``model: null``, how many prompts and images, a hash of the prompt records and one of the image files (so a
    later look can tell whether the images changed since they were scored)."""
    return {"layout": layout, "source": EXTERNAL, "model": None, "weights_sha256": None,
            "metadata_sha256": records_sha256(records), "prompts": len(records), "images": len(images),
            "images_sha256": files_sha256(root, images), "parauni_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}


def label(record: dict) -> str:
    """``model (weights 1a2b3c4d)``: how a score names the model it belongs to (``external images (images
    1a2b3c4d)`` for images made elsewhere)."""
    if record.get("source") == EXTERNAL:
        return f"external images (images {record['images_sha256'][:8]})"
    return f"{record['model']} (weights {record['weights_sha256'][:8]})"
