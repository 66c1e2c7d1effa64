"""What a row may give a model, decided before any GPU time: the model's family from its folder, image columns
checked and staged at intake, inputs a pipeline does not take refused at planning, and empty cells filled with the
model's own defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from reelbatch.engine.inputs import open_staged
from reelbatch.manifest import ManifestError, check_columns, parse_manifest_text, read_manifest
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.registry import FAMILIES
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import RunDefaults
from reelbatch.tasks.images import check_images
from tests.cli_runner import reelbatch

CATALOG = ModelCatalog.from_config()


def plan_text(text: str, catalog: ModelCatalog = CATALOG, defaults: RunDefaults = RunDefaults()):
    read = parse_manifest_text(text, defaults, catalog)
    return plan_run(read.rows, read.rejections, read.total_rows, catalog, 2, device="cpu")


def rules_of(run_plan) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for r in run_plan.rejected:
        found.setdefault(r.row, set()).add(r.rule)
    return found


# --- a model's family comes from its folder ----------------------------------------------------------------------


def test_a_registry_name_on_a_folder_of_another_kind_is_refused_at_planning(tiny_models):
    catalog = ModelCatalog.from_config([f"wan2.1-t2v-14b={tiny_models['tiny-wan2.1-i2v']}"])
    with pytest.raises(UnknownModel) as caught:
        catalog.family("wan2.1-t2v-14b")
    message = str(caught.value)
    assert "wan2.1-t2v-14b is a WanPipeline" in message and "WanImageToVideoPipeline" in message
    assert str(tiny_models["tiny-wan2.1-i2v"]) in message and "--model-path wan2.1-t2v-14b=DIR" in caught.value.fix
    run_plan = plan_text("prompt,model,height,width,num_frames\na cat,wan2.1-t2v-14b,480,832,81\n", catalog)
    [rejection] = run_plan.rejected
    assert rejection.rule == "model_folder_mismatch" and "WanImageToVideoPipeline" in rejection.message
    assert rejection.column == "model" and "a name of its own" in rejection.fix
    assert not run_plan.jobs


def test_a_registry_name_on_its_own_kind_of_folder_plans_with_the_registry_facts(tiny_models):
    # tiny-wan's folder has 4 heads, wan2.1-t2v-1.3b 12: the heads differ, so even this is refused ...
    catalog = ModelCatalog.from_config([f"wan2.1-t2v-1.3b={tiny_models['tiny-wan']}"])
    with pytest.raises(UnknownModel, match="attention heads 12 vs 4"):
        catalog.family("wan2.1-t2v-1.3b")
    # ... while a tiny name on its own folder agrees.
    catalog = ModelCatalog.from_config([f"tiny-wan2.2-a14b={tiny_models['tiny-wan2.2-a14b']}"])
    assert catalog.family("tiny-wan2.2-a14b") is FAMILIES["tiny-wan2.2-a14b"]


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.builtin_tiny))
def test_every_tiny_folder_agrees_with_its_registry_entry(tiny_models, name):
    catalog = ModelCatalog.from_config([f"{name}={tiny_models[name]}"])
    assert catalog.family(name) is FAMILIES[name]
    # Read as a custom name, the folder alone gives the same inputs, experts and sequence parallelism.
    custom = ModelCatalog.from_config([f"mine={tiny_models[name]}"]).family("mine")
    registry = FAMILIES[name]
    for fact in (
        "pipeline_class",
        "kind",
        "heads",
        "experts",
        "expand_timesteps",
        "image_condition_type",
        "image_input",
        "last_image",
        "guidance_embedding",
        "native",
        "pixels_per_token",
    ):
        assert getattr(custom, fact) == getattr(registry, fact), fact


def test_a_custom_name_takes_its_family_and_defaults_from_the_folder(tiny_models):
    catalog = ModelCatalog.from_config([f"my-i2v={tiny_models['tiny-skyreels-v1-i2v']}"])
    family = catalog.family("my-i2v")
    assert (family.pipeline_class, family.image_input, family.kind) == (
        "HunyuanSkyreelsImageToVideoPipeline",
        "required",
        "hunyuan",
    )
    # Left at defaults, its rows get what the pipeline's __call__ uses: true CFG 6.0 (which runs only against a
    # negative prompt), embedded guidance 1.0, 50 steps.
    with_negative, without = parse_manifest_text(
        "prompt,model,negative_prompt\na cat,my-i2v,blurry\na dog,my-i2v,\n", RunDefaults(), catalog
    ).rows
    assert (with_negative.guidance_scale, with_negative.embedded_guidance_scale) == (6.0, 1.0)
    assert (without.guidance_scale, without.num_inference_steps) == (1.0, 50)


def test_a_class_the_engine_does_not_run_is_refused_with_the_classes_it_runs(tmp_path, tiny_models):
    folder = tmp_path / "hv15"
    shutil.copytree(tiny_models["tiny-hunyuan"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "HunyuanVideo15Pipeline"}))
    run_plan = plan_text("prompt,model\na cat,hv15\n", ModelCatalog.from_config([f"hv15={folder}"]))
    [rejection] = run_plan.rejected
    assert rejection.rule == "pipeline_not_supported" and "guider" in rejection.message
    assert "WanPipeline" in rejection.fix and "HunyuanSkyreelsImageToVideoPipeline" in rejection.fix


def test_planning_without_any_folder_keeps_working_from_the_registry():
    run_plan = plan_text(
        "prompt,model,height,width,num_frames,image\na cat,skyreels-v1-i2v,544,960,97,frames/cat.png\n"
    )
    [job] = run_plan.jobs  # not read here (plan_run reads no image): the registry says what the model takes
    assert (
        job.bucket.conditioning == "first_frame" and job.family.pipeline_class == "HunyuanSkyreelsImageToVideoPipeline"
    )


# --- inputs a pipeline takes ---------------------------------------------------------------------------------------


def test_inputs_a_model_does_not_take_or_needs_are_row_errors_with_a_fix():
    run_plan = plan_text(
        "prompt,model,image,last_image,guidance_scale_2,embedded_guidance_scale\n"
        "on text-only,tiny-wan,a.png,,,\n"
        "none on i2v,tiny-wan2.1-i2v,,,,\n"
        "last on i2v,tiny-wan2.1-i2v,a.png,b.png,,\n"
        "no last on flf,tiny-wan2.1-flf2v,a.png,,,\n"
        "two experts ok,tiny-wan2.2-a14b,,,3,\n"
        "one expert,tiny-wan,,,3,\n"
        "no embedding,tiny-wan,,,,6\n"
        "ti2v with image,tiny-wan2.2-ti2v,a.png,,,\n"
        "ti2v without,tiny-wan2.2-ti2v,,,,\n"
    )
    assert rules_of(run_plan) == {
        2: {"image_not_supported"},
        3: {"image_required"},
        4: {"last_image_not_supported"},
        5: {"last_image_required"},
        7: {"guidance_scale_2_not_supported"},
        8: {"embedded_guidance_not_supported"},
    }
    for rejection in run_plan.rejected:
        assert rejection.fix and rejection.column in (
            "image",
            "last_image",
            "guidance_scale_2",
            "embedded_guidance_scale",
        )
    # A TI2V model takes both: its image rows and text rows never share a job.
    ti2v = sorted(j.bucket.conditioning for j in run_plan.jobs if j.bucket.model == "tiny-wan2.2-ti2v")
    assert ti2v == ["first_frame", "text"]


# --- unknown columns ----------------------------------------------------------------------------------------------


def test_an_unknown_column_is_a_warning_naming_the_closest_and_strict_refuses():
    text = "prompt,guidence_scale,weather\na cat,3,rain\n"
    for columnar in (True, False):
        read = parse_manifest_text(text, RunDefaults(), CATALOG, columnar=columnar)
        assert read.unknown_columns == ["guidence_scale", "weather"]
        assert "did you mean 'guidance_scale'?" in read.warnings[0]
        assert "manifest columns:" in read.warnings[1]
        check_columns(read, strict=False)
        with pytest.raises(ManifestError, match="--strict: column 'guidence_scale'"):
            check_columns(read, strict=True)
        assert read.rows[0].guidance_scale == 5.0  # ignored, as the warning says


def test_unknown_keys_of_jsonl_manifests_warn_too(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "a cat", "imagee": "a.png"}\n')
    assert read_manifest(path, RunDefaults(), CATALOG).unknown_columns == ["imagee"]


# --- empty cells take the model's defaults -------------------------------------------------------------------------


def test_empty_cells_take_each_models_own_defaults_and_the_run_wins():
    text = "prompt,model\na,hunyuanvideo\nb,skyreels-v1-t2v\nc,tiny-wan\nd,tiny-wan2.2-a14b\ne,tiny-hunyuan\n"
    rows = {r.model: r for r in parse_manifest_text(text, RunDefaults(), CATALOG).rows}
    # HunyuanVideo at defaults costs what pipe(prompt) costs: no true CFG, embedded guidance 6.
    assert (rows["hunyuanvideo"].guidance_scale, rows["hunyuanvideo"].embedded_guidance_scale) == (1.0, 6.0)
    assert (rows["skyreels-v1-t2v"].guidance_scale, rows["skyreels-v1-t2v"].embedded_guidance_scale) == (6.0, 1.0)
    assert rows["hunyuanvideo"].num_inference_steps == 50 and rows["tiny-wan"].num_inference_steps == 4
    assert (rows["tiny-wan"].guidance_scale, rows["tiny-wan"].embedded_guidance_scale) == (5.0, None)
    # The pipeline's rule for an empty guidance_scale_2 (the same as guidance_scale), recorded resolved.
    assert rows["tiny-wan2.2-a14b"].guidance_scale_2 == 5.0 and rows["tiny-wan"].guidance_scale_2 is None
    # SkyReels-V1's recipe runs true CFG against its own negative prompt; the others have none by default.
    assert (
        rows["skyreels-v1-t2v"].negative_prompt.startswith("Aerial view") and rows["hunyuanvideo"].negative_prompt == ""
    )

    run = RunDefaults(guidance_scale=3.0, num_inference_steps=7, guidance_scale_2=2.0, embedded_guidance_scale=4.0)
    rows = {r.model: r for r in parse_manifest_text(text, run, CATALOG).rows}
    assert {r.num_inference_steps for r in rows.values()} == {7}
    # (HunyuanVideo-family rows without a negative prompt run no true CFG: guidance 1; SkyReels-V1 has its own.)
    assert {m: r.guidance_scale for m, r in rows.items()} == {
        "hunyuanvideo": 1.0,
        "skyreels-v1-t2v": 3.0,
        "tiny-wan": 3.0,
        "tiny-wan2.2-a14b": 3.0,
        "tiny-hunyuan": 1.0,
    }
    # Run defaults of the optional guidances go only to models that take them.
    assert rows["tiny-wan2.2-a14b"].guidance_scale_2 == 2.0 and rows["tiny-wan"].guidance_scale_2 is None
    assert rows["tiny-hunyuan"].embedded_guidance_scale == 4.0 and rows["tiny-wan"].embedded_guidance_scale is None
    # ... and are checked like cells.
    bad = parse_manifest_text(text, RunDefaults(guidance_scale_2=-1.0), CATALOG)
    assert {r.rule for r in bad.rejections} == {"negative_guidance"} and len(bad.rejections) == 5
    assert "this is the run default" in bad.rejections[0].message


def test_the_reference_recipe_is_resolved_per_size():
    wan14b = FAMILIES["wan2.1-t2v-14b"].defaults
    assert (wan14b.flow_shift_for(480, 832), wan14b.flow_shift_for(720, 1280)) == (3.0, 5.0)
    assert wan14b.fp32_components == ("vae",) and "image_encoder" in FAMILIES["wan2.1-i2v-14b"].defaults.fp32_components
    assert FAMILIES["skyreels-v2-t2v-14b"].defaults.flow_shift_for(544, 960) == 8.0
    assert FAMILIES["tiny-wan"].defaults.flow_shift_for(32, 32) is None  # the folder's own scheduler


# --- images at intake ---------------------------------------------------------------------------------------------


def picture(path: Path, color: tuple[int, int, int], size=(40, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_intake_stages_images_and_rejects_rows_whose_image_cannot_be_used(tmp_path):
    manifest = tmp_path / "m" / "prompts.csv"
    picture(tmp_path / "m" / "frames" / "red.png", (255, 0, 0))
    picture(tmp_path / "m" / "frames" / "red-again.png", (255, 0, 0))
    picture(tmp_path / "m" / "frames" / "blue.png", (0, 0, 255))
    secret = picture(tmp_path / "elsewhere" / "secret.png", (9, 9, 9))
    manifest.write_text(
        "id,prompt,model,image,seed\n"
        "red,a cat,tiny-wan2.1-i2v,frames/red.png,1\n"
        "same picture,a cat,tiny-wan2.1-i2v,frames/red-again.png,1\n"
        "blue,a cat,tiny-wan2.1-i2v,frames/blue.png,1\n"
        "missing,a cat,tiny-wan2.1-i2v,frames/none.png,1\n"
        f"outside,a cat,tiny-wan2.1-i2v,{secret},1\n"
        f"text-only model,a cat,tiny-wan,{secret},1\n"
    )
    store = tmp_path / "store"
    read = check_images(read_manifest(manifest, RunDefaults(), CATALOG), CATALOG, store)
    rows = {r.id: r for r in read.rows}
    assert rows["red"].image_sha256 == rows["same picture"].image_sha256 != rows["blue"].image_sha256
    assert rows["red"].image == "frames/red.png"
    assert open_staged(store, rows["blue"].image_sha256).getpixel((0, 0)) == (0, 0, 255)
    assert {(r.row, r.column, r.rule) for r in read.rejections} == {
        (5, "image", "image_missing"),
        (6, "image", "image_not_allowed"),
    }
    assert read.raw_rows[6]["image"] == str(secret)
    # The text-only row is left for planning (nothing read): there it is refused for its image.
    assert rows["text-only model"].image_sha256 is None
    run_plan = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 2, device="cpu")
    assert rules_of(run_plan)[7] == {"image_not_supported"}
    # Same prompt and picture under another name: the same video, which the first row already asks for; another
    # picture with the same prompt and seed is another video.
    assert rules_of(run_plan)[3] == {"duplicate_sample"} and 4 not in rules_of(run_plan)
    assert len(list(store.rglob("*"))) == 4  # two pictures, each in its fan-out folder: nothing else was copied


def test_an_image_root_allows_another_place(tmp_path):
    other = picture(tmp_path / "library" / "cat.png", (1, 2, 3))
    manifest = tmp_path / "m" / "prompts.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"prompt,model,image\na cat,tiny-wan2.1-i2v,{other}\n")
    read = read_manifest(manifest, RunDefaults(), CATALOG)
    assert check_images(read, CATALOG, tmp_path / "s1").rejections[0].rule == "image_not_allowed"
    allowed = check_images(read, CATALOG, tmp_path / "s2", roots=[str(tmp_path / "library")])
    assert not allowed.rejections and allowed.rows[0].image_sha256


def test_reelbatch_models_show_prints_defaults_inputs_and_parallel_support():
    shown = reelbatch("models", "show", "skyreels-v1-i2v", "--json")
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["pipeline"] == "HunyuanSkyreelsImageToVideoPipeline" and facts["inputs"] == "text + image"
    assert facts["defaults (empty cells)"]["guidance_scale"] == 6.0
    assert facts["defaults (empty cells)"]["embedded_guidance_scale"] == 1.0
    assert facts["parallel (native)"]["ulysses"] == "yes" and facts["parallel (native)"]["ring"] == "no"


def test_true_cfg_without_a_negative_prompt_runs_and_is_planned_at_guidance_1():
    text = "prompt,model,guidance_scale,negative_prompt\na,tiny-hunyuan,6,\nb,tiny-hunyuan,6,ugly\nc,tiny-wan,6,\n"
    for columnar in (True, False):
        rows = {r.prompt: r for r in parse_manifest_text(text, RunDefaults(), CATALOG, columnar=columnar).rows}
        assert (rows["a"].guidance_scale, rows["b"].guidance_scale, rows["c"].guidance_scale) == (1.0, 6.0, 6.0)
    # So the planner gives the row no CFG pair: HunyuanVideo's pipeline would not run the second pass.
    run_plan = plan_text("prompt,model,guidance_scale\na,tiny-hunyuan,6\n")
    assert [j.plan.cfg for j in run_plan.jobs] == [1] and run_plan.jobs[0].bucket.guidance_scale == 1.0


def test_secrets_of_urls_reach_no_message_and_no_kept_cell():
    secret = "s3://AKIAKEY:TOPSECRET@bucket/frame.png"
    signed = "https://host/frame.png?X-Amz-Signature=SIGSECRET"
    text = (
        "prompt,model,image\n"
        f"a,tiny-wan2.1-i2v,{secret}\n"
        f"b,tiny-wan2.1-i2v,{signed}\n"
        f"c,tiny-wan2.1-i2v,{secret + 'x' * 3000}\n"
        f"d,{secret},frames/a.png\n"
        f"e,tiny-wan2.1-i2v,frames/a.png,{secret}\n"
    )
    for columnar in (True, False):
        read = parse_manifest_text(text, RunDefaults(), CATALOG, columnar=columnar)
        rules = {r.row: r.rule for r in read.rejections}
        assert rules == {
            2: "image_credentials_in_url",
            3: "image_url_query",
            4: "image_credentials_in_url",
            5: "unknown_model",
            6: "extra_cells",
        }
        shown = json.dumps([r.model_dump() for r in read.rejections]) + json.dumps(read.raw_rows)
        assert "TOPSECRET" not in shown and "AKIAKEY" not in shown and "SIGSECRET" not in shown
        assert read.raw_rows[2]["image"] == "s3://***@bucket/frame.png"


def test_a_broken_model_folder_fails_its_own_rows_not_the_manifest(tmp_path, tiny_models):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["tiny-wan"], broken)
    config = json.loads((broken / "transformer" / "config.json").read_text())
    del config["num_attention_heads"]
    (broken / "transformer" / "config.json").write_text(json.dumps(config))
    catalog = ModelCatalog.from_config([f"broken={broken}"])
    run_plan = plan_text("prompt,model\na,tiny-wan\nb,broken\n", catalog)
    assert [r.rule for r in run_plan.rejected] == ["model_unavailable"] and "config.json" in run_plan.rejected[
        0
    ].message
    assert [j.bucket.model for j in run_plan.jobs] == ["tiny-wan"]


def test_an_image_root_with_credentials_is_a_usage_error(tmp_path, monkeypatch):
    # In this process: the root is refused before the flow starts or any environment variable is set.
    monkeypatch.chdir(tmp_path)
    done = reelbatch(
        "run", "missing.csv", "--image-root", "s3://key:secret@bucket/x/", "--db", f"sqlite:///{tmp_path / 'r.db'}"
    )
    assert done.returncode == 2 and "must be a plain URL prefix" in done.stderr
    assert "secret" not in done.stderr and "Traceback" not in done.stderr
