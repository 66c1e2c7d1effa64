"""The offline gallery's HTML: one card per sample row (first frame inlined as PNG), on linked pages.

Pages, not one page: a 1M-video run's single page would not open in a browser. Page 1 (``<run>.html``, where the
run report points) links every page; the others link the first, previous, next and last.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import fsspec

from reelbatch.engine.inputs import open_staged

THUMBNAIL_WIDTH = 256

GALLERY_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem;font-size:.85rem}
.card img{width:256px;image-rendering:pixelated;display:block;margin-bottom:.4rem}
.pair{display:flex;gap:.3rem}.pair img{width:128px}
.status-done{color:#17803d}.status-failed{color:#b91c1c}.status-rejected{color:#92400e}
.prompt{font-weight:600;white-space:pre-wrap;word-break:break-word}.params{color:#555}
nav{margin:1rem 0;line-height:1.8}nav a,nav b{margin-right:.5rem}
"""


def _first_frame_png(video_url: str) -> str | None:
    """The video's first frame as a base64 PNG, scaled to THUMBNAIL_WIDTH; None if it cannot be read."""
    try:
        import av

        with fsspec.open(video_url, "rb") as fh, av.open(fh) as container:
            frame = next(container.decode(video=0)).to_image()
    except Exception:  # a missing or unreadable file shows as "no preview", it must not break the page
        return None
    return _thumbnail_png(frame)


def _input_frame_png(images_dir: Path | None, sha256: str | None) -> str | None:
    """The staged input image (the frame the video starts from) as a base64 PNG thumbnail, or None."""
    if images_dir is None or not sha256:
        return None
    try:
        return _thumbnail_png(open_staged(images_dir, sha256))
    except Exception:  # a staged copy gone (another machine, cleaned up) shows as "no preview"
        return None


def _thumbnail_png(frame) -> str:
    from PIL import Image

    height = max(1, round(frame.height * THUMBNAIL_WIDTH / frame.width))
    frame = frame.resize((THUMBNAIL_WIDTH, height), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_tag(png: str | None, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{png}">' if png else ""


def card(s: dict, images_dir: Path | None) -> str:
    """A sample row's card: preview, prompt, parameters and status.

    An image-to-video row shows its input frame (from the run's staged images) next to the video's first frame,
    with the input's location and content hash."""
    preview = _first_frame_png(s["output_path"]) if s["status"] == "done" and s["output_path"] else None
    image = _image_tag(preview, "first frame") or "<p>no preview</p>"
    given = _image_tag(_input_frame_png(images_dir, s.get("image_sha256")), "input image")
    if given:
        image = f'<div class="pair">{given}{image}</div>'
    params = (
        f"{s['model']} {s['height']}x{s['width']}x{s['num_frames']}, {s['num_inference_steps']} steps, "
        f"guidance {s['guidance_scale']}, seed {s['seed']}"
    )
    for column in ("image", "last_image"):
        if s.get(column):
            params += f", {column} {s[column]} (sha256 {(s.get(column + '_sha256') or '?')[:12]})"
    if s.get("lora"):
        params += f", LoRA {s['lora']} x{s.get('lora_scale') or 1:g} (sha256 {(s.get('lora_sha256') or '?')[:12]})"
    problem = s["error"] or ""
    if s.get("reject_fix"):
        problem += f" (fix: {s['reject_fix']})"
    return (
        f'<div class="card">{image}<div class="prompt">{html.escape(s["prompt"] or "")}</div>'
        f'<div class="params">line {s["row"]}, {html.escape(params)}</div>'
        f'<div class="status-{html.escape(s["status"])}">{html.escape(s["status"])}'
        f"{(': ' + html.escape(problem)) if problem else ''}</div></div>"
    )


def page_name(run_id: str, page: int) -> str:
    """File name of a gallery page, in the gallery folder: page 1 is ``<run>.html``."""
    return f"{run_id}.html" if page == 1 else f"{run_id}-{page}.html"


def _link(run_id: str, page: int, text: str, current: int) -> str:
    return f"<b>{text}</b>" if page == current else f'<a href="{html.escape(page_name(run_id, page))}">{text}</a>'


def _navigation(run_id: str, page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    if page == 1:  # the index: every page
        links = [_link(run_id, p, str(p), page) for p in range(1, pages + 1)]
    else:
        links = [_link(run_id, 1, "index", page)]
        if page > 2:
            links.append(_link(run_id, page - 1, "previous", page))
        links.append(f"<b>page {page} of {pages}</b>")
        if page < pages:
            links.append(_link(run_id, page + 1, "next", page))
        if page < pages - 1:
            links.append(_link(run_id, pages, f"last ({pages})", page))
    return f"<nav>{' '.join(links)}</nav>"


def page_html(run: dict, cards: list[str], page: int, pages: int) -> str:
    """One self-contained page; ``run`` holds id, status, manifest_source, rows and done (the whole run's)."""
    title = f"reelbatch run {run['id']}" + (f" (page {page} of {pages})" if pages > 1 else "")
    navigation = _navigation(run["id"], page, pages)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{GALLERY_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(str(run.get('manifest_source', '')))} &middot; status {html.escape(run['status'])}"
        f" &middot; {run['done']} of {run['rows']} rows done</p>"
        f"{navigation}<div class='grid'>{''.join(cards)}</div>{navigation}</body></html>"
    )
