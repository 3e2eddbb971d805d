"""ParaUni: all-layer VLM conditioning for diffusion transformers.

The names below are imported on first use (PEP 562), so that ``import parauni`` (and the ``parauni`` command,
which starts with it) loads neither torch nor transformers before it needs them: the command line answers
Ctrl-C and ``--help`` from its first moment."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "LayerIntegrationModule": ".models", "ParaUniConditioner": ".models", "PromptTemplate": ".models",
    "VLMBackbone": ".models", "PRESETS": ".models.presets", "build_preset": ".models.presets",
    "ParaUniPipeline": ".pipelines", "build_tiny": ".pipelines.presets", "load_preset": ".pipelines.presets",
}
__all__ = ["LayerIntegrationModule", "ParaUniConditioner", "PromptTemplate", "VLMBackbone", "ParaUniPipeline",
           "PRESETS", "build_preset", "build_tiny", "load_preset"]

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported here
    from .models import LayerIntegrationModule, ParaUniConditioner, PromptTemplate, VLMBackbone
    from .models.presets import PRESETS, build_preset
    from .pipelines import ParaUniPipeline
    from .pipelines.presets import build_tiny, load_preset


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
