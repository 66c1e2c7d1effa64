"""The registry's facts of the built-in tiny pipelines (``models/tiny.py`` builds them; no torch here).

One tiny random-weight pipeline per pipeline class and layout the engine runs, so that every adapter has a parity
test against its pipeline's own ``__call__``. Their defaults are their class's, with 4 steps and 8 fps so that a
laptop run takes seconds. ``test_size`` is a (height, width) whose token count splits over 2 ranks.
"""

from __future__ import annotations

from reelbatch.models.pipelines import HUNYUAN_NATIVE, NO_SEQUENCE_PARALLEL, PIPELINES


def _tiny(pipeline_class: str, test_size=(32, 32), **family) -> dict:
    call = PIPELINES[pipeline_class].defaults
    family.setdefault("defaults", call.with_(num_inference_steps=4, fps=8))
    return {"pipeline_class": pipeline_class, "test_size": test_size, "family": family}


TINY_FAMILIES: dict[str, dict] = {
    "tiny-wan": _tiny("WanPipeline"),
    "tiny-hunyuan": _tiny("HunyuanVideoPipeline"),
    "tiny-wan2.2-a14b": _tiny("WanPipeline", experts=2),
    "tiny-wan2.2-ti2v": _tiny(
        "WanPipeline", (64, 64), expand_timesteps=True, vae_stride_s=16, size_multiple=32, image_input="optional"
    ),
    "tiny-wan2.1-i2v": _tiny("WanImageToVideoPipeline", last_image="none"),
    "tiny-wan2.1-flf2v": _tiny("WanImageToVideoPipeline", last_image="required"),
    "tiny-wan2.2-i2v-a14b": _tiny("WanImageToVideoPipeline", experts=2),
    "tiny-skyreels-v2": _tiny("SkyReelsV2Pipeline"),
    "tiny-skyreels-v2-i2v": _tiny("SkyReelsV2ImageToVideoPipeline", last_image="none"),
    "tiny-skyreels-v1-i2v": _tiny("HunyuanSkyreelsImageToVideoPipeline"),
    "tiny-hunyuan-i2v": _tiny(
        "HunyuanVideoImageToVideoPipeline", image_condition_type="token_replace", native=NO_SEQUENCE_PARALLEL
    ),
    "tiny-hunyuan-i2v-33ch": _tiny(
        "HunyuanVideoImageToVideoPipeline",
        image_condition_type="latent_concat",
        native=HUNYUAN_NATIVE,
        guidance_embedding=False,
        defaults=PIPELINES["HunyuanVideoImageToVideoPipeline"].defaults.with_(
            num_inference_steps=4, fps=8, embedded_guidance_scale=None
        ),
    ),
}
