"""`reelbatch run` on a manifest mixing text and image rows: images on local disk and on the S3 test server, two
rows with the same prompt and different images, a missing image, an image on a text-only model and one outside
the allowed places. Right videos, right rejections, the image recorded everywhere, nothing traced back."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s3fs
from PIL import Image

from reelbatch.engine.video import read_mp4

pytestmark = [pytest.mark.torchrun, pytest.mark.usefixtures("prefect_api")]


def png(color: tuple[int, int, int], size=(40, 24)) -> bytes:
    import io

    buffer = io.BytesIO()
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    pixels[: size[1] // 2] //= 3  # not a flat colour: the resize has something to do
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_text_and_image_rows_from_disk_and_s3(tmp_path, s3_bucket):
    folder = tmp_path / "manifests"
    (folder / "frames").mkdir(parents=True)
    red, blue, green = png((250, 20, 20)), png((20, 20, 250)), png((20, 250, 20))
    (folder / "frames" / "red.png").write_bytes(red)
    (folder / "frames" / "blue.png").write_bytes(blue)
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(png((1, 2, 3)))
    s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{s3_bucket}/images/green.png", green)

    rows = [
        # id, prompt, model, image, seed
        ("text", "snow falls over a quiet village", "tiny-wan", "", 1),
        ("red", "a cat walks on a sunny street", "tiny-wan2.1-i2v", "frames/red.png", 2),
        ("blue", "a cat walks on a sunny street", "tiny-wan2.1-i2v", "frames/blue.png", 2),
        ("s3", "a dog runs through a park", "tiny-wan2.1-i2v", f"s3://{s3_bucket}/images/green.png", 3),
        ("missing", "a fox", "tiny-wan2.1-i2v", "frames/none.png", 4),
        ("text-only", "a bird", "tiny-wan", "frames/red.png", 5),
        ("outside", "a fish", "tiny-wan2.1-i2v", str(secret), 6),
    ]
    manifest = folder / "prompts.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "model", "image", "seed"])
        writer.writerows(rows)
    db_file = tmp_path / "state.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelbatch.cli",
            "run",
            str(manifest),
            "--gpus",
            "2",
            "--out",
            "dataset",
            "--db",
            f"sqlite:///{db_file}",
            "--image-root",
            f"s3://{s3_bucket}/images/",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]  # three rows rejected, the rest done
    assert "Traceback" not in output

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    samples = {s["row_id"]: s for s in db.execute("select * from samples")}
    assert {k for k, s in samples.items() if s["status"] == "done"} == {"text", "red", "blue", "s3"}
    rejected = {k: (s["reject_column"], s["reject_rule"]) for k, s in samples.items() if s["status"] == "rejected"}
    assert rejected == {
        "missing": ("image", "image_missing"),
        "text-only": ("image", "image_not_supported"),
        "outside": ("image", "image_not_allowed"),
    }
    assert samples["missing"]["image"] == "frames/none.png"  # the cells of rejected rows are kept

    # The image is part of the identity and is recorded with its location.
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in (("red", red), ("blue", blue), ("s3", green))}
    for name, digest in sha.items():
        assert samples[name]["image_sha256"] == digest and samples[name]["conditioning"] == "first_frame"
    assert samples["s3"]["image"] == f"s3://{s3_bucket}/images/green.png"
    assert samples["text"]["image"] is None and samples["text"]["conditioning"] == "text"
    assert samples["red"]["sample_id"] != samples["blue"]["sample_id"]
    videos = {name: read_mp4(samples[name]["output_path"]) for name in ("text", "red", "blue", "s3")}
    assert all(v.shape == (5, 32, 32, 3) for v in videos.values())
    assert np.abs(videos["red"].astype(int) - videos["blue"].astype(int)).max() > 10  # another image, another video
    sidecar = json.loads(Path(samples["blue"]["output_path"]).with_suffix(".json").read_text())
    assert (sidecar["image"], sidecar["image_sha256"], sidecar["conditioning"]) == (
        "frames/blue.png",
        sha["blue"],
        "first_frame",
    )

    out = tmp_path / "dataset"
    metadata = {m["row_id"]: m for m in csv.DictReader((out / "metadata.csv").open())}
    assert metadata["red"]["image"] == "frames/red.png" and metadata["red"]["image_sha256"] == sha["red"]
    assert metadata["text"]["image"] == ""
    [gallery] = (out / "gallery").glob("*.html")
    page = gallery.read_text()
    assert page.count('alt="input image"') == 3 and sha["s3"][:12] in page

    # Nothing from outside the allowed places was read or copied: the staged images are the three allowed ones.
    staged = {p.name for p in (out / ".reelbatch" / "images").rglob("*") if p.is_file()}
    assert staged == set(sha.values())
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in staged
