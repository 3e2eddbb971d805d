"""``parauni app``: a local web page (Gradio) to generate images with a model."""

from __future__ import annotations

from ...errors import UsageError
from ..options import add_dtype_option


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="serve a local web page to try a model (needs the extra: pip install .[app])")
    p.add_argument("--model", required=True,
                   help="toy-all-layers, toy-last-layer, tiny, a preset name, or a saved pipeline folder / hub id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    add_dtype_option(p)
    p.set_defaults(func=run)


def run(args):
    if not 1 <= args.port <= 65535:  # before loading anything: a TCP port is 16 bits
        raise UsageError(f"--port {args.port}: a TCP port is at most 65535; give one such as 7860")
    from ...app.ui import serve  # lazy: building the parser imports neither Gradio nor torch

    serve(args.model, host=args.host, port=args.port, device=args.device, dtype=getattr(args, "dtype", "auto"))
