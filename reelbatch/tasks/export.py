"""A finished run as a dataset people can load: an index next to the videos, exports, an offline gallery.

- ``metadata.csv`` in the Hugging Face ``videofolder`` layout: ``file_name`` (relative to the output folder)
  plus the prompt and generation parameters, one line per done video;
- ``samples.parquet``: every column of the run's samples table;
- ``gallery/<run>.html``: one self-contained page (first frames inlined as PNG) that opens offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import fsspec

from reelbatch.engine.inputs import open_staged
from reelbatch.infra.db import Database
from reelbatch.infra.storage import images_root, is_local

ExportFormat = Literal["parquet", "csv", "jsonl"]

METADATA_COLUMNS = (
    "file_name", "prompt", "negative_prompt", "model", "height", "width", "num_frames", "num_inference_steps",
    "guidance_scale", "embedded_guidance_scale", "seed", "sample_id", "row", "row_id", "video_index",
    "guidance_scale_2", "conditioning", "image", "image_sha256", "last_image", "last_image_sha256",
)  # fmt: skip

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
THUMBNAIL_WIDTH = 256


def neutralise_formula(value: object) -> object:
    """Text a spreadsheet would execute gets a leading apostrophe; numbers and other text pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def file_name(output_root: str, output_path: str) -> str:
    """The video's path relative to the output folder (what ``videofolder`` expects in ``file_name``)."""
    root = output_root.rstrip("/")
    if is_local(root):
        root = str(Path(root.removeprefix("file://")).resolve())
    return output_path[len(root) + 1 :] if output_path.startswith(root + "/") else output_path


def _done(samples: Iterable[dict]) -> list[dict]:
    return [s for s in samples if s["status"] == "done" and s["output_path"]]


def _open(url: str, mode: str):
    if "w" in mode and is_local(url):
        Path(url.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
    return fsspec.open(url, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {}))


def write_metadata_csv(samples: list[dict], output_root: str, url: str) -> int:
    rows = _done(samples)
    with _open(url, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for s in rows:
            # Not neutralised: this file is the dataset itself, read by loaders, and must keep prompts verbatim.
            writer.writerow({**s, "file_name": file_name(output_root, s["output_path"])})
    return len(rows)


def _jsonable(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value


def write_samples(samples: list[dict], url: str, fmt: ExportFormat) -> int:
    """Every column of every sample row of the run (rejected and failed ones too)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with _open(url, "wb") as fh:
            pq.write_table(pa.Table.from_pylist(samples), fh)
    elif fmt == "jsonl":
        with _open(url, "w") as fh:
            for s in samples:
                fh.write(json.dumps({k: _jsonable(v) for k, v in s.items()}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        columns = list(samples[0]) if samples else []
        with _open(url, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for s in samples:
                writer.writerow({k: neutralise_formula(_jsonable(v)) for k, v in s.items()})
    else:
        raise ValueError(f"unknown export format {fmt!r}: use parquet, csv or jsonl")
    return len(samples)


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


GALLERY_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem;font-size:.85rem}
.card img{width:256px;image-rendering:pixelated;display:block;margin-bottom:.4rem}
.pair{display:flex;gap:.3rem}.pair img{width:128px}
.status-done{color:#17803d}.status-failed{color:#b91c1c}.status-rejected{color:#92400e}
.prompt{font-weight:600;white-space:pre-wrap;word-break:break-word}.params{color:#555}
"""


def _image_tag(png: str | None, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{png}">' if png else ""


def write_gallery(run: dict, samples: list[dict], url: str, images_dir: Path | None = None) -> int:
    """A static page per run: preview, prompt, parameters and status of every row; everything inline.

    An image-to-video row shows its input frame (from the run's staged images) next to the video's first frame,
    with the input's location and content hash."""
    cards = []
    for s in samples:
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
        problem = s["error"] or ""
        if s.get("reject_fix"):
            problem += f" (fix: {s['reject_fix']})"
        cards.append(
            f'<div class="card">{image}<div class="prompt">{html.escape(s["prompt"] or "")}</div>'
            f'<div class="params">line {s["row"]}, {html.escape(params)}</div>'
            f'<div class="status-{html.escape(s["status"])}">{html.escape(s["status"])}'
            f"{(': ' + html.escape(problem)) if problem else ''}</div></div>"
        )
    title = f"reelbatch run {run['id']}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{GALLERY_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(str(run.get('manifest_source', '')))} &middot; status {html.escape(run['status'])}"
        f" &middot; {len(_done(samples))} of {len(samples)} rows done</p>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>"
    )
    with _open(url, "w") as fh:
        fh.write(page)
    return len(cards)


def write_dataset_index(db: Database, run_id: str, output_root: str) -> dict[str, str]:
    """metadata.csv, samples.parquet and the gallery for a run, next to its videos; returns their locations."""
    summary = db.run_summary(run_id)
    samples = db.samples(run_id)
    root = output_root.rstrip("/")
    if is_local(root):
        root = str(Path(root.removeprefix("file://")).resolve())
    locations = {
        "metadata": f"{root}/metadata.csv",
        "samples": f"{root}/samples.parquet",
        "gallery": f"{root}/gallery/{summary.id}.html",
    }
    write_metadata_csv(samples, output_root, locations["metadata"])
    write_samples(samples, locations["samples"], "parquet")
    run = {"id": summary.id, "status": summary.status, "manifest_source": summary.manifest_source}
    write_gallery(run, samples, locations["gallery"], images_root(output_root))
    return locations


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from prefect import task  # noqa: E402

write_dataset_index_task = task(name="write-dataset-index")(write_dataset_index)
