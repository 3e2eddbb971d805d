"""The page of ``parauni app`` (Gradio): the form, the gallery, the progress bar and the message line.

Gradio is the optional extra ``app`` (``pip install .[app]``); it is imported here only, when the app starts.
A bad value in the form (an empty prompt, steps of 0, a size the model refuses) shows one line in the page's
message area naming the field and the fix; any other failure shows one line too, and its traceback goes to the
server's log, never to the page.
"""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError, UsageError
from .session import MAX_IMAGES, AppSession, Batch

logger = logging.getLogger(__name__)
INSTALL_HINT = "parauni app needs Gradio, the optional extra 'app': pip install .[app]  (or pip install 'parauni[app]')"
MAX_HISTORY = 64  # images kept in the gallery, newest first


def import_gradio():
    """Gradio, or a :class:`UsageError` whose one line says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local app
    try:
        import gradio
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return gradio


def error_line(err: BaseException) -> str:
    """The page's one line for a failed click: the message of bad input, a short note for anything else."""
    if isinstance(err, (UsageError, ConfigError)):
        return str(err)
    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and "out of memory" in text):
        return f"out of memory ({text}); try fewer images or a smaller size"
    return f"internal error ({type(err).__name__}: {text[:200]}); the server's log has the details"


def status_markdown(batch: Batch) -> str:
    """The message line after a click: how many images in how long, and any note (no verdict, unknown words)."""
    return "\n\n".join([f"Generated {len(batch.results)} image(s) in {batch.seconds:.1f} s.", *batch.notes])


def details_markdown(batch: Batch) -> str:
    """A table of one click's images for toy models: seed, toy GenEval verdict, detections (empty otherwise)."""
    if not any(r.verdict is not None for r in batch.results):
        return ""
    lines = ["| seed | toy GenEval | detections |", "|---|---|---|"]
    for r in batch.results:
        v = r.verdict
        verdict = "no verdict" if v.tag is None else ("correct" if v.correct else f"wrong: {v.reason}")
        found = ", ".join(f"{d.color} {d.cls} ({d.confidence:.2f})" for d in v.detections) or "none"
        lines.append(f"| {r.seed} | {verdict} | {found} |")
    return "\n".join(lines)


def build_app(session: AppSession):
    """The Gradio ``Blocks`` of the app for a loaded :class:`AppSession`."""
    gr = import_gradio()
    kind = "toy-world model: each image shows the toy detector's boxes and its toy GenEval verdict" \
        if session.is_toy else "images as the model makes them"
    default_prompt = "a photo of two circles" if session.is_toy else "a photo of a cat on a red sofa"

    def run(prompt, seed, steps, guidance, height, width, images, history, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        progress(0, desc="starting")
        try:
            batch = session.generate(prompt, seed, steps, guidance, height, width, images,
                                     on_step=lambda done, total: progress((done, total), desc="denoising",
                                                                          unit="step"))
        except Exception as err:  # noqa: BLE001 - every failure is one line in the page; bugs are logged
            if not isinstance(err, (UsageError, ConfigError)):
                logger.exception("generation failed")
            return history, f"**Could not generate:** {error_line(err)}", "", history
        new = [(r.shown, r.caption) for r in batch.results]
        history = (new + list(history))[:MAX_HISTORY]
        return history, status_markdown(batch), details_markdown(batch), history

    with gr.Blocks(title=f"ParaUni: {session.model}") as demo:
        gr.Markdown(f"## ParaUni: `{session.model}`\n{kind}. Native size: {session.native or '?'} px.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", value=default_prompt, lines=2, elem_id="prompt")
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                    images = gr.Number(label=f"images (1-{MAX_IMAGES})", value=4 if session.is_toy else 1,
                                       precision=0, elem_id="images")
                with gr.Row():
                    steps = gr.Number(label="steps", value=20, precision=0, elem_id="steps")
                    guidance = gr.Number(label="guidance", value=4.5 if not session.is_toy else 1.0,
                                         elem_id="guidance")
                with gr.Row():
                    height = gr.Number(label="height (px)", value=session.native, precision=0, elem_id="height")
                    width = gr.Number(label="width (px)", value=session.native, precision=0, elem_id="width")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="results (newest first)", columns=4, height="auto", elem_id="gallery")
                details = gr.Markdown("", elem_id="details")
        history = gr.State([])
        inputs = [prompt, seed, steps, guidance, height, width, images, history]
        outputs = [gallery, status, details, history]
        button.click(run, inputs, outputs, api_name="generate")
        prompt.submit(run, inputs, outputs)
    return demo


def serve(model: str, host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          dtype: str = "auto") -> None:
    """Load ``model`` and serve the app on ``http://host:port`` until interrupted."""
    import_gradio()  # before the model loads: a missing extra is the first thing said
    session = AppSession(model, device=device, dtype=dtype)
    demo = build_app(session)
    try:
        demo.queue().launch(server_name=host, server_port=port, show_error=False, inbrowser=False, share=False,
                            quiet=True, prevent_thread_lock=True)
    except OSError as err:
        why = " ".join(str(err).split()).split(". ")[0].rstrip(".")
        raise UsageError(f"cannot serve on {host}:{port} ({why}); pass another --port or --host") from err
    print(f"parauni app: {model} on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    demo.block_thread()  # until Ctrl-C, which closes the server
