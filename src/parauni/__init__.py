"""ParaUni: all-layer VLM conditioning for diffusion transformers."""

from .models import LayerIntegrationModule, ParaUniConditioner, PromptTemplate, VLMBackbone
from .models.presets import PRESETS, build_preset
from .pipelines import ParaUniPipeline
from .pipelines.presets import build_tiny, load_preset

__version__ = "0.1.0"
__all__ = ["LayerIntegrationModule", "ParaUniConditioner", "PromptTemplate", "VLMBackbone", "ParaUniPipeline",
           "PRESETS", "build_preset", "build_tiny", "load_preset"]
