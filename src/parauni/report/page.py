"""The report's writer: one HTML page (images inline as data URIs, CSS inline) and its Markdown twin (images as
files beside it), built side by side by :class:`Page`."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from PIL import Image

THUMBNAIL = 256  # longest side of embedded sample images
MIN_SHOWN = 128  # smaller images are enlarged by an integer factor (nearest-neighbour) to at least this side

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;padding:0 16px}
h1{border-bottom:2px solid #444;padding-bottom:6px}h2{border-bottom:1px solid #bbb;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;border:1px solid #ddd;padding:10px;overflow-x:auto;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:min-content}
figure img{image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:12px;color:#444}.curve{max-width:100%;border:1px solid #eee}
.curves{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.curves img{max-width:560px}
.path,.note{color:#666;font-size:13px}
details{margin:8px 0}summary{cursor:pointer;color:#444}
"""



def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1000 or (v != 0 and abs(v) < 0.01) else f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Page:
    """Builds the HTML page and its Markdown twin side by side; images go inline (HTML) and to files (MD)."""

    def __init__(self, files_dir: Path, link_name: str | None = None):
        """Images are written into ``files_dir`` and linked from the Markdown as ``<link_name>/<image>.png``
        (default the folder's own name; another when the folder is built under a temporary name)."""
        self.html: list[str] = []
        self.md: list[str] = []
        self.files_dir = files_dir
        self.link_name = link_name or files_dir.name
        self.names: set[str] = set()

    def heading(self, text: str, level: int) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def pre(self, text: str, title: str) -> None:
        self.html.append(f"<p class=\"note\">{html.escape(title)}</p><pre>{html.escape(text)}</pre>")
        lang = "json" if title.endswith(".json") else "yaml"
        fence = "````" if "```" in text else "```"
        self.md.append(f"`{title}`:\n\n{fence}{lang}\n{text.rstrip()}\n{fence}\n")

    def details(self, summary: str, text: str, title: str) -> None:
        """``text`` (a config) folded under ``summary``: ``<details>`` in both HTML and Markdown."""
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre>"
                         "</details>")
        lang = "json" if title.endswith(".json") else "yaml"
        fence = "````" if "```" in text else "```"
        self.md.append(f"<details><summary>{summary}</summary>\n\n{fence}{lang}\n{text.rstrip()}\n{fence}\n\n"
                       "</details>\n")

    def table(self, headers: list[str], rows: list[list]) -> None:
        cells = [[fmt(c) for c in row] for row in rows]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in cells]
        self.md.append("\n".join(lines) + "\n")

    def image_file(self, png: bytes, stem: str) -> tuple[str, str]:
        """``(data URI, relative path)`` of a PNG, written into the Markdown twin's files folder."""
        name, n = slug(stem), 1
        while f"{name}.png" in self.names:
            n += 1
            name = f"{slug(stem)}_{n}"
        self.names.add(f"{name}.png")
        self.files_dir.mkdir(parents=True, exist_ok=True)
        (self.files_dir / f"{name}.png").write_bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return uri, f"{self.link_name}/{name}.png"

    def image_row(self, items: list[tuple[bytes, str, str]]) -> None:
        """Figures ``(png, stem, alt)`` side by side (wrapping), e.g. one run's curves."""
        imgs = []
        for png, stem, alt in items:
            uri, rel = self.image_file(png, stem)
            imgs.append(f'<img class="curve" src="{uri}" alt="{html.escape(alt, quote=True)}">')
            self.md.append(f"![{md_cell(alt)}]({rel})\n")
        self.html.append('<div class="curves">' + "".join(imgs) + "</div>")

    def image(self, png: bytes, stem: str, alt: str, cls: str = "curve") -> None:
        uri, rel = self.image_file(png, stem)
        self.html.append(f'<p><img class="{cls}" src="{uri}" alt="{html.escape(alt, quote=True)}"></p>')
        self.md.append(f"![{md_cell(alt)}]({rel})\n")

    def figures(self, items: list[tuple[bytes, str, str]]) -> None:
        """A grid of captioned images: ``(png, stem, caption)``."""
        figs, md_imgs = [], []
        for png, stem, caption in items:
            uri, rel = self.image_file(png, stem)
            cap = html.escape(caption)
            figs.append(f'<figure><img src="{uri}" alt="{html.escape(caption, quote=True)}">'
                        f"<figcaption>{cap}</figcaption></figure>")
            md_imgs.append((rel, caption))
        self.html.append('<div class="grid">' + "".join(figs) + "</div>")
        self.md.append("| " + " | ".join(f"![{md_cell(c)}]({r})" for r, c in md_imgs) + " |\n"
                       + "|" + "---|" * len(md_imgs) + "\n"
                       + "| " + " | ".join(md_cell(c) for _, c in md_imgs) + " |\n")


def thumbnail_png(path: Path, size: int = THUMBNAIL, min_side: int = MIN_SHOWN) -> bytes:
    """A PNG of the image at ``path``: its longest side at most ``size`` (Lanczos), and an image smaller than
    ``min_side`` enlarged by the integer factor that reaches it, nearest-neighbour (a 32-px toy image x4)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        longest = max(im.size)
        if longest < min_side:
            k = -(-min_side // longest)
            im = im.resize((im.width * k, im.height * k), Image.NEAREST)
        elif longest > size:
            im.thumbnail((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()
