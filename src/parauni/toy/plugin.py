"""The toy world as a plugin of the core: its models, rewards, data stream, prompts and evaluation.

``register`` is announced under the ``parauni.plugins`` entry-point group (``pyproject.toml``), so the core
finds the toy world by name (``--model toy-all-layers``, ``model.source: toy``, ``data.kind: toy``,
``prompts.kind: toy``, ``rewards.weights: {toy_geneval: 1}``, ``train.eval: toy_geneval``) without importing
it. The loaders import the toy modules when called, so registering costs nothing. Its names are the defaults of
configs that name none (``model.source``, ``data.kind``, ``prompts.kind``, ``rewards.weights``, the evaluation of
``train.eval_geneval``), and its rewards have their LDAM layer groups.

The v2 world (:mod:`parauni.toy.worlds`) is chosen by name: ``data.kind: toy_v2`` (its training stream, without
its held-out compositions), ``prompts.kind: toy_v2`` (its seen prompts); the evaluator ``toy_geneval_v2`` scores
its seen and held-out prompts, summarised apart, and is what a run trained on ``toy_v2`` is evaluated with
unless ``train.evaluator`` names another. The rewards read the world from each prompt's record.
"""

from __future__ import annotations

from functools import partial

TOY_MODEL_HELP = {"toy-all-layers": "shipped stage-II toy model, the LIM over every VLM layer",
                  "toy-last-layer": "shipped stage-II toy model, the last VLM layer only (the baseline)"}
# in the order of the default rewards.weights (each weighted 1)
TOY_REWARDS = {"toy_alignment": "parauni.toy.rewards.alignment:ToyAlignmentReward",
               "toy_quality": "parauni.toy.rewards.quality:ToyQualityReward",
               "toy_geneval": "parauni.toy.rewards.geneval:ToyGenEvalReward"}
# the LDAM layer group of each: the stand-ins of the paper's clipscore (deep), aesthetic (middle), pickscore (shallow)
TOY_LDAM_GROUPS = {"toy_alignment": "deep", "toy_quality": "middle", "toy_geneval": "shallow"}


def _load_model(name: str, dtype=None, device=None):
    from .models import load_toy_model

    return load_toy_model(name, dtype=dtype, device=device)


def _build_model(model_cfg, seed: int = 0):
    from .models import build_from_config

    return build_from_config(model_cfg, seed)


def _dataset(data_cfg, seed: int, world: str = "v1"):
    from .data import ToySource

    return ToySource(seed, data_cfg.resolution, data_cfg.template_prob, world)


def _prompts(prompt_cfg, seed: int, world: str = "v1"):
    from .prompts import ToyPromptSource

    return ToyPromptSource(seed, prompt_cfg.pool, world)


def _evaluate(pipe, out, *args, world: str | None = None, **kwargs):
    from .evaluation import toy_geneval

    if world is not None and kwargs.get("metadata") is None:
        kwargs["world"] = world
    return toy_geneval(pipe, out, *args, **kwargs)


def _app_view():
    from .app_view import ToyAppView

    return ToyAppView


def _is_toy_pipeline(pipe) -> bool:
    from .vlm import is_toy_vlm_pipeline

    return is_toy_vlm_pipeline(pipe)


def _toy_metadata():
    from importlib import resources

    from .geneval import METADATA_FILE

    return resources.files("parauni.toy").joinpath("data", METADATA_FILE)


def _score_geneval(out):
    from .geneval import score_dir

    return score_dir(out)


def _is_toy_metadata(metas: list[dict]) -> bool:
    from .worlds import WORLDS

    classes = {inc["class"] for m in metas for inc in m.get("include", [])}
    return bool(classes) and any(classes <= set(w.shapes) for w in WORLDS.values())


def _is_prior(model: str) -> bool:
    from .prior import is_prior_arg

    return is_prior_arg(model)


def _load_prior(model: str, steps: int, guidance):
    from .evaluation import resolve_model

    return resolve_model(model, steps, guidance)


def _embedder(path=None, device: str = "cpu"):
    from .rewards.alignment import ToyImageEmbedder

    return ToyImageEmbedder(path, device=device)


def register() -> None:
    from ..registry import (
        DATASETS,
        EVALUATOR_OF_KIND,
        EVALUATORS,
        FAMILIES,
        GENERATORS,
        IMAGE_EMBEDDERS,
        LDAM_GROUPS,
        MODEL_BUILDERS,
        MODELS,
        PROMPT_SOURCES,
        REWARDS,
        Family,
        Generator,
    )

    for name, text in TOY_MODEL_HELP.items():
        MODELS.register(name, partial(_load_model, name), text, replace=True)
    MODEL_BUILDERS.register("toy", _build_model, "the shipped toy VLM and prior with a fresh conditioner",
                            replace=True, default=True)
    for name, target in TOY_REWARDS.items():
        REWARDS.register(name, target, replace=True, default=True)
        LDAM_GROUPS.register(name, TOY_LDAM_GROUPS[name], replace=True)
    DATASETS.register("toy", _dataset, "the toy world's endless stream of rendered scenes", replace=True,
                      default=True)
    DATASETS.register("toy_v2", partial(_dataset, world="v2"), "the v2 toy world's endless stream of rendered "
                      "scenes, without its held-out compositions", replace=True)
    PROMPT_SOURCES.register("toy", _prompts, "random toy GenEval records (prompts.pool: a fixed set)",
                            replace=True, default=True)
    PROMPT_SOURCES.register("toy_v2", partial(_prompts, world="v2"), "random seen toy GenEval records of the v2 "
                            "world (prompts.pool: a fixed set)", replace=True)
    EVALUATORS.register("toy_geneval", _evaluate, "toy GenEval of the final model", replace=True, default=True)
    EVALUATORS.register("toy_geneval_v2", partial(_evaluate, world="v2"), "toy GenEval of the final model on the "
                        "v2 world's seen and held-out prompts", replace=True)
    # runs trained on the v2 world (data.kind / prompts.kind toy_v2) are evaluated on its seen and held-out prompts
    EVALUATOR_OF_KIND.register("toy_v2", "toy_geneval_v2", "the v2 world's toy GenEval", replace=True)
    FAMILIES.register("toy", Family("toy", _is_toy_pipeline, geneval_metadata=_toy_metadata,
                                     metadata_match=_is_toy_metadata, geneval_scorer=_score_geneval,
                                     embedder="toy", app_view=_app_view),
                      "pipelines on the toy VLM: toy GenEval prompts, the toy detector, the toy image encoder",
                      replace=True)
    GENERATORS.register("prior", Generator(_is_prior, _load_prior, family="toy"),
                        "'prior' (the shipped toy prior) or a toy prior folder", replace=True)
    IMAGE_EMBEDDERS.register("toy", _embedder, "the toy alignment model's image encoder ('toy' or 'toy:PATH')",
                             replace=True)
