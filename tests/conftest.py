from pathlib import Path

import pytest
import torch

from parauni import build_tiny

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny random pipeline (DC-AE latents); tests must not modify it."""
    torch.manual_seed(0)
    return build_tiny(seed=0)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``: files not bundled with the package (the LAION aesthetic head). The GenEval and
    DPG-Bench prompts are bundled: use :mod:`parauni.eval.bundled` instead."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
