"""``parauni eval reconstruct``: image -> VLM -> reconstruction, and its PSNR / SSIM / CLIP-sim table."""

from __future__ import annotations

from .common import add_generation_options


def add_parser(evs) -> None:
    r = evs.add_parser("reconstruct", help="image -> VLM -> reconstruction: PSNR / SSIM / CLIP-sim table")
    r.add_argument("--model", action="append", required=True, help="'tiny', a preset or pipeline folder; repeat")
    r.add_argument("--images", required=True, help="folder of input images (unreadable files are skipped)")
    r.add_argument("--out", required=True, help="output folder: reconstructions, summary.json, table.md")
    r.add_argument("--clip", help="CLIPModel hub id or folder, 'toy' or 'toy:PATH' (toy alignment encoder; the "
                                  "default when every model is a toy model), or 'none'; default "
                                  "openai/clip-vit-large-patch14")
    r.add_argument("--batch-size", type=int, default=8)
    cfg = r.add_mutually_exclusive_group()
    cfg.add_argument("--cfg-prompt", metavar="TEXT",
                     help="instruction of the unconditional (CFG) branch, which keeps the input image; default "
                          "the conditional instruction 'Keep the image as it is.', as in OpenUni, so both "
                          "branches coincide and the guidance scale has no effect")
    cfg.add_argument("--cfg-text-only", action="store_true",
                     help="drop the image from the unconditional branch and use the text-only unconditional "
                          "prompt ('Generate an image.') instead")
    add_generation_options(r, resumable=False)
    r.set_defaults(func=run)


def run(args) -> None:
    from ....eval.reconstruct import run as run_reconstruct  # lazy: building the parser loads no command's library

    run_reconstruct(args)
