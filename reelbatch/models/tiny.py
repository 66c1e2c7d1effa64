"""Tiny random-weight video pipelines that reelbatch builds itself.

They exist so the whole path (tokenizer, text encoder, transformer, scheduler, VAE, mp4) runs on a laptop and in
CI without a hub download, and so that every pipeline class and checkpoint layout the engine supports has a parity
test against that pipeline's own ``__call__``. They are real diffusers pipelines: saved with ``save_pretrained``
and loaded back with ``from_pretrained`` from a local folder, exactly like a production checkpoint.

The shapes are chosen to keep the parallel rules meaningful: 4 attention heads in every denoising transformer (so
ulysses 2 and 4 are legal, 3 is not), the production VAE strides (4 in time, 8 in space; 16 for Wan 2.2's TI2V
VAE) and patch (1, 2, 2). The Wan family lives in ``tiny_wan.py``, the HunyuanVideo family in
``tiny_hunyuan.py``; ``tiny_facts.py`` holds what the registry knows of each (no torch needed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from reelbatch.models import tiny_hunyuan, tiny_wan
from reelbatch.models.tiny_common import train_tokenizer as _train_tokenizer  # noqa: F401  (bench/ uses it)

TINY_MODEL_VERSION = 2  # bump when a recipe changes so cached builds are rebuilt

TINY_BUILDERS = {
    "tiny-wan": tiny_wan.build_tiny_wan,
    "tiny-hunyuan": tiny_hunyuan.build_tiny_hunyuan,
    "tiny-wan2.2-a14b": tiny_wan.build_wan22_a14b,
    "tiny-wan2.2-ti2v": tiny_wan.build_wan22_ti2v,
    "tiny-wan2.1-i2v": tiny_wan.build_wan21_i2v,
    "tiny-wan2.1-flf2v": tiny_wan.build_wan21_flf2v,
    "tiny-wan2.2-i2v-a14b": tiny_wan.build_wan22_i2v_a14b,
    "tiny-skyreels-v2": tiny_wan.build_skyreels_v2,
    "tiny-skyreels-v2-i2v": tiny_wan.build_skyreels_v2_i2v,
    "tiny-skyreels-v1-i2v": tiny_hunyuan.build_skyreels_v1_i2v,
    "tiny-hunyuan-i2v": tiny_hunyuan.build_hunyuan_i2v,
    "tiny-hunyuan-i2v-33ch": tiny_hunyuan.build_hunyuan_i2v_33ch,
}


def _quiet_libraries() -> int:
    """Building takes a fraction of a second: per-shard progress bars, and transformers' notice that its CLIP image
    processor falls back to Pillow without torchvision (the tiny models name the Pillow one), only clutter a run's
    output. Returns the transformers verbosity to restore."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    return verbosity


def default_cache_dir() -> Path:
    root = os.environ.get("REELBATCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reelbatch"
    )
    return Path(root) / "models"


def ensure_tiny_model(name: str, cache_dir: Path | None = None) -> Path:
    """Return the local diffusers folder of tiny model ``name``, building it once if needed.

    The folder is built in a temporary directory and renamed into place, so concurrent ranks or runs never
    see a half-written model; a stamp file records the recipe version.
    """
    if name not in TINY_BUILDERS:
        raise KeyError(f"{name!r} is not a built-in tiny model (known: {', '.join(sorted(TINY_BUILDERS))})")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{name}-v{TINY_MODEL_VERSION}"
    if (target / "reelbatch-tiny.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    verbosity = None
    try:
        verbosity = _quiet_libraries()
        pipe = TINY_BUILDERS[name]()
        pipe.save_pretrained(staging)
        (staging / "reelbatch-tiny.json").write_text(json.dumps({"name": name, "version": TINY_MODEL_VERSION}))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "reelbatch-tiny.json").exists():  # lost a race to a complete build: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if verbosity is not None:
            import transformers

            transformers.utils.logging.set_verbosity(verbosity)
    return target
