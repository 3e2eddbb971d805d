"""Evaluation: generation into benchmark layouts and scoring.

* :mod:`parauni.eval.geneval` -- GenEval's layout (resumable), Markdown tables;
* :mod:`parauni.eval.dpg` -- DPG-Bench's 2x2 grids (resumable), ``--model`` helpers shared by ``parauni eval``;
* :mod:`parauni.eval.reconstruct` -- reconstruction through the VLM: PSNR, SSIM, CLIP image similarity.
"""

# the environment variable naming the official GenEval scorer's command (``parauni eval geneval --scorer official``)
GENEVAL_SCORER_ENV = "PARAUNI_GENEVAL_SCORER"
# the environment variable naming the WISE judge's command (``parauni eval wise``, read by :mod:`parauni.eval.wise`)
WISE_JUDGE_ENV = "PARAUNI_WISE_JUDGE"
