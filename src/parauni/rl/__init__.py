"""Stage III (Flow-GRPO with LDAM): SDE exploration, the LDAM controller, reward curves."""

from .ldam import LDAM
from .sde import SDEStepOutput, sde_step, sigma_grid

__all__ = ["LDAM", "SDEStepOutput", "sde_step", "sigma_grid"]
