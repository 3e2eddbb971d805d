from .backbone import VLMBackbone, query_position_ids, resolve_layers
from .conditioner import ParaUniConditioner
from .lim import LayerIntegrationModule
from .prompt import PromptTemplate, tokenize_prompts

__all__ = ["VLMBackbone", "query_position_ids", "resolve_layers", "ParaUniConditioner",
           "LayerIntegrationModule", "PromptTemplate", "tokenize_prompts"]
