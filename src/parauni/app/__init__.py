"""``parauni app``: a local web page to try a model (Gradio, the optional extra ``app``).

:mod:`parauni.app.session` loads the model and generates (no web framework); :mod:`parauni.toy.app_view` draws
the toy detector's boxes and the toy GenEval verdict on toy-world images; :mod:`parauni.app.ui` builds the page
and serves it. Only :mod:`parauni.app.ui` imports Gradio, and only when the app starts.
"""

from .session import AppSession, Batch, Result

__all__ = ["AppSession", "Batch", "Result"]
