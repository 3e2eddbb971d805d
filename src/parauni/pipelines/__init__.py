from .pipeline_parauni import ParaUniPipeline

__all__ = ["ParaUniPipeline"]
