import socket
from collections.abc import Callable
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
def free_port() -> Callable[[], int]:
    """Call it for a TCP port that is free now (the OS picks it: bind to port 0), for torchrun's
    ``--master_port``: a fixed port fails when two test runs, or a training run, use it at the same time."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``: files not bundled with the package (the LAION aesthetic head). The GenEval and
    DPG-Bench prompts are bundled: use :mod:`parauni.eval.bundled` instead."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
