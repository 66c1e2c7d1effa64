"""Behaviour of the manifest reader: valid rows, row rejections with fixes that work, file-level errors."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelbatch.manifest import (
    MAX_SEED,
    ManifestError,
    ManifestLimits,
    ManifestReadResult,
    parse_manifest_text,
    read_manifest,
    rejected_row_values,
)
from reelbatch.manifest.cells import RowContext as _RowContext
from reelbatch.manifest.checks import RowChecker as _RowChecker
from reelbatch.manifest.checks import check_record as _check_record
from reelbatch.manifest.checks import read_header as _read_header
from reelbatch.schemas import ManifestRow, RowRejection, RunDefaults
from reelbatch.tasks.manifest import read_manifest_task
from tests.hypothesis_budget import scaled

KNOWN_MODELS = {"tiny-wan", "tiny-hunyuan"}
DEFAULTS = RunDefaults()


def parse(text: str | bytes, defaults: RunDefaults = DEFAULTS, **kwargs) -> ManifestReadResult:
    return parse_manifest_text(text, defaults, KNOWN_MODELS, **kwargs)


def csv_text(*rows: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def single_cell_row(column: str, value: str) -> str:
    return csv_text(["prompt", column], ["a cat walks", value])


def only_rejection(text: str | bytes, **kwargs) -> RowRejection:
    result = parse(text, **kwargs)
    assert result.rows == []
    assert len(result.rejections) == 1, result.rejections
    return result.rejections[0]


def only_row(text: str | bytes, **kwargs) -> ManifestRow:
    result = parse(text, **kwargs)
    assert result.rejections == []
    assert len(result.rows) == 1
    return result.rows[0]


def values_suggested_by(fix: str) -> list[str]:
    """The concrete replacement values a fix names: numbers, booleans, model names."""
    words = re.findall(r"-?[0-9]+(?:\.[0-9]+)?|true|false|tiny-[a-z]+", fix)
    assert words, f"fix names no concrete value: {fix!r}"
    return words


# --------------------------------------------------------------------------------------------------------------
# Valid manifests
# --------------------------------------------------------------------------------------------------------------


def test_valid_file_round_trip_applies_run_defaults(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text(
        csv_text(
            ["id", "prompt", "model", "height", "width", "num_frames", "seed", "num_videos", "sequence_batch"],
            ["cat", "a cat walks", "tiny-hunyuan", "480", "832", "81", "7", "2", "yes"],
            ["", "a dog runs", "", "", "", "", "", "", ""],
        ),
        encoding="utf-8",
    )
    defaults = RunDefaults(model="tiny-wan", height=48, width=64, num_frames=9, guidance_scale=6.5)

    result = read_manifest(path, defaults, KNOWN_MODELS)

    assert result.rejections == []
    assert result.total_rows == 2
    assert result.source == str(path)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first, second = result.rows
    assert first == ManifestRow(
        row=2, id="cat", prompt="a cat walks", model="tiny-hunyuan", height=480, width=832, num_frames=81,
        num_inference_steps=4, seed=7, num_videos=2, sequence_batch=True,
        embedded_guidance_scale=6.0,  # tiny-hunyuan's own default: the run gives none
        guidance_scale=1.0,  # the run's 6.5 is true CFG, which HunyuanVideo runs only against a negative prompt
    )  # fmt: skip
    assert second == ManifestRow(
        row=3, id=None, prompt="a dog runs", model="tiny-wan", height=48, width=64, num_frames=9,
        num_inference_steps=4, guidance_scale=6.5, seed=None, num_videos=1, sequence_batch=False,
    )  # fmt: skip


def test_every_column_is_parsed():
    row = only_row(
        csv_text(
            [
                "id",
                "prompt",
                "negative_prompt",
                "model",
                "height",
                "width",
                "num_frames",
                "num_inference_steps",
                "guidance_scale",
                "embedded_guidance_scale",
                "seed",
                "num_videos",
                "sequence_batch",
                "plan",
                "backend",
                "guidance_scale_2",
                "image",
                "last_image",
                "cache",
                "lora",
                "lora_scale",
            ],
            [
                "r1",
                "a cat",
                "blurry",
                "tiny-hunyuan",
                "480.0",
                "+848",
                "129",
                "50",
                "7.5",
                "5",
                str(MAX_SEED),
                "64",
                "OFF",
                "cfg=2,ulysses=2",
                "XDiT",
                "3",
                " frames/first.png ",
                "s3://bucket/last.png",
                " FBC:0.10 ",
                " loras/style.safetensors ",
                "0.75",
            ],
        )  # fmt: skip
    )
    assert row.model_dump() == {
        "row": 2, "id": "r1", "prompt": "a cat", "negative_prompt": "blurry", "model": "tiny-hunyuan",
        "height": 480, "width": 848, "num_frames": 129, "num_inference_steps": 50, "guidance_scale": 7.5,
        "embedded_guidance_scale": 5.0, "seed": MAX_SEED, "num_videos": 64, "sequence_batch": False,
        "plan": {"dp": 1, "cfg": 2, "ulysses": 2, "ring": 1}, "backend": "xdit", "guidance_scale_2": 3.0,
        "image": "frames/first.png", "last_image": "s3://bucket/last.png", "cache": "fbc:0.1",
        "lora": "loras/style.safetensors", "lora_scale": 0.75,
        "image_sha256": None, "last_image_sha256": None,  # set by intake, once it has read the images
        "flow_shift": None,  # tiny-hunyuan keeps its folder's scheduler
        "lora_sha256": None,  # set by intake, once it has read the adapter
    }  # fmt: skip


@pytest.mark.parametrize(
    ("column", "cell", "expected"),
    [
        ("height", " 64 ", 64),
        ("height", "64.", 64),
        ("width", "0016", 16),
        ("num_frames", "1", 1),
        ("num_frames", "1025", 1025),
        ("guidance_scale", "0", 0.0),
        ("guidance_scale", "1e1", 10.0),
        ("guidance_scale", ".5", 0.5),
        ("seed", "0", 0),
        ("sequence_batch", "TRUE", True),
        ("sequence_batch", "1", True),
        ("sequence_batch", "On", True),
        ("sequence_batch", "no", False),
        ("sequence_batch", "0", False),
    ],
)
def test_accepted_cell_values(column, cell, expected):
    assert getattr(only_row(single_cell_row(column, cell)), column) == expected


def test_header_names_are_normalised_and_unknown_columns_ignored():
    row = only_row(csv_text([" Prompt ", "HEIGHT", "notes", ""], ["a cat", "64", "ignored", "ignored too"]))
    assert (row.prompt, row.height) == ("a cat", 64)


def test_short_rows_use_defaults_for_missing_cells():
    row = only_row("prompt,height,width\na cat\n")
    assert (row.height, row.width) == (DEFAULTS.height, DEFAULTS.width)


def test_prompt_is_stripped_but_otherwise_kept_verbatim():
    tricky = 'a "quoted" cat,\nwalking over ../../etc/passwd; DROP TABLE rows; -- {fix} \u2028 ünïcödé 🐈'
    result = parse(csv_text(["prompt"], ["  ../../etc/passwd  "], [tricky], [" \t" + tricky + "\n "]))
    assert [row.prompt for row in result.rows] == ["../../etc/passwd", tricky, tricky]


def test_header_only_gives_no_rows():
    result = parse("prompt,height\n")
    assert (result.rows, result.rejections, result.total_rows) == ([], [], 0)


def test_blank_lines_are_skipped_and_not_counted():
    result = parse("\n\nprompt,height\n\na cat,64\n,\n  ,  \n\na dog,32\n\n")
    assert result.total_rows == 2
    assert [(row.row, row.prompt) for row in result.rows] == [(5, "a cat"), (9, "a dog")]


def test_row_numbers_are_the_line_each_row_starts_on():
    text = (
        '"prom\npt",height\r\n'  # header spans lines 1-2
        "one,64\r\n"  # line 3
        '"two\nlines\r\nand three",64\r\n'  # lines 4-6
        "\r\n"  # line 7, blank
        '"four",oops\r\n'  # line 8: bad height
        'five,"6\n4"\n'  # lines 9-10: bad height spanning lines
        "six,64"  # line 11, no final newline
    )
    # The header cell "prom\npt" is not "prompt", so give it the real name on one line for the second case.
    with pytest.raises(ManifestError, match="no 'prompt' column"):
        parse(text)
    result = parse(text.replace('"prom\npt"', '"prompt\n"'))
    assert [row.row for row in result.rows] == [3, 4, 11]
    assert result.rows[1].prompt == "two\nlines\r\nand three"
    assert [(rejection.row, rejection.column) for rejection in result.rejections] == [(8, "height"), (9, "height")]


def test_bom_is_stripped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("prompt,height\r\na cat,64\r\n".encode("utf-8-sig"))
    result = read_manifest(str(path), DEFAULTS, KNOWN_MODELS)
    assert [row.prompt for row in result.rows] == ["a cat"]
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_lines_and_characters_split_across_read_chunks_are_reassembled():
    header = "prompt,height\r\n"
    filler = "x" * (64 * 1024 - len(header) - len("a,64") - 1)
    # The \r\n of row 2 and the 3-byte "€" of row 3 both straddle the 64 KiB read boundaries.
    text = header + f"a{filler},64\r\n" + "€" * 30_000 + ",64\r\nlast,32\r\n"
    result = parse(text, limits=ManifestLimits(max_prompt_chars=100_000))
    assert [row.row for row in result.rows] == [2, 3, 4]
    assert result.rows[1].prompt == "€" * 30_000
    assert result.sha256 == hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Row rejections
# --------------------------------------------------------------------------------------------------------------

REJECTED_CELLS = [
    ("height", "abc", "not_integer"),
    ("height", "480.5", "not_integer"),
    ("width", "1_024", "not_integer"),
    ("height", "40", "size_not_multiple_of_16"),
    ("width", "0", "size_not_positive"),
    ("width", "-32", "size_not_positive"),
    ("height", "4096", "size_too_large"),
    ("num_frames", "80", "frames_not_4k_plus_1"),
    ("num_frames", "0", "frames_not_positive"),
    ("num_frames", "2000", "frames_too_many"),
    ("num_frames", "8.5", "not_integer"),
    ("num_inference_steps", "0", "steps_out_of_range"),
    ("num_inference_steps", "-3", "steps_out_of_range"),
    ("num_inference_steps", "1001", "steps_out_of_range"),
    ("guidance_scale", "abc", "not_a_number"),
    ("guidance_scale", "nan", "not_a_number"),
    ("guidance_scale", "inf", "not_a_number"),
    ("guidance_scale", "1e999", "not_a_number"),
    ("guidance_scale", "-1", "negative_guidance"),
    ("embedded_guidance_scale", "NaN", "not_a_number"),
    ("embedded_guidance_scale", "-0.5", "negative_guidance"),
    ("seed", "-1", "seed_out_of_range"),
    ("seed", str(2**63), "seed_out_of_range"),
    ("seed", "9" * 5000, "seed_out_of_range"),
    ("seed", "12ab", "not_integer"),
    ("num_videos", "65", "too_many_videos"),
    ("num_videos", "0", "too_few_videos"),
    ("sequence_batch", "maybe", "not_boolean"),
    ("model", "tiny-flux", "unknown_model"),
]


@pytest.mark.parametrize(("column", "cell", "rule"), REJECTED_CELLS)
def test_bad_cell_is_rejected_with_a_fix_that_works(column, cell, rule):
    rejection = only_rejection(single_cell_row(column, cell))

    assert (rejection.row, rejection.column, rejection.rule) == (2, column, rule)
    assert rejection.message.startswith(f'{column} "{cell[:20]}')
    assert len(rejection.message) < 200
    for suggested in values_suggested_by(rejection.fix):
        fixed = only_row(single_cell_row(column, suggested))
        assert fixed.row == 2


@pytest.mark.parametrize(
    ("column", "cell", "fix"),
    [
        ("height", "40", "use 32 or 48"),
        ("width", "1000", "use 992 or 1008"),
        ("height", "4096", "use 2048"),
        ("width", "-7", "use 16"),
        ("num_frames", "80", "use 77 or 81"),
        ("num_frames", "83", "use 81 or 85"),
        ("num_frames", "5000", "use 1025"),
        ("model", "flux", "use one of: tiny-hunyuan, tiny-wan"),
    ],
)
def test_fixes_name_the_nearest_valid_values(column, cell, fix):
    assert only_rejection(single_cell_row(column, cell)).fix == fix


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n"])
def test_empty_prompt(prompt):
    rejection = only_rejection(csv_text(["prompt", "height"], [prompt, "64"]))
    assert (rejection.row, rejection.column, rejection.rule) == (2, "prompt", "empty_prompt")
    assert rejection.fix == "write a prompt or delete the row"


def test_missing_prompt_cell_is_an_empty_prompt():
    rejection = only_rejection("height,prompt\n64\n")
    assert (rejection.column, rejection.rule) == ("prompt", "empty_prompt")


@pytest.mark.parametrize("column", ["prompt", "negative_prompt"])
def test_prompt_too_long_and_shortening_fixes_it(column):
    limits = ManifestLimits(max_prompt_chars=50)
    long_text = "a very long prompt" * 10

    def manifest(text: str) -> str:
        return csv_text(["prompt", "negative_prompt"], [text if column == "prompt" else "a cat", text])

    rejection = only_rejection(manifest(long_text), limits=limits)
    assert (rejection.column, rejection.rule) == (column, "prompt_too_long")
    assert "180 characters" in rejection.message and "50 characters" in rejection.fix
    only_row(manifest(long_text[:50]), limits=limits)


def test_huge_prompt_is_read_then_rejected_not_a_csv_crash():
    huge = "x" * 300_000  # larger than csv's default field size limit
    result = parse(csv_text(["prompt"], [huge], ["a cat"]))
    assert [rejection.rule for rejection in result.rejections] == ["prompt_too_long"]
    assert [row.prompt for row in result.rows] == ["a cat"]


def test_extra_cells_are_rejected_but_empty_trailing_cells_are_fine():
    result = parse("prompt,height\na cat, walking,64\na dog,64,,\n")
    assert [row.row for row in result.rows] == [3]
    (rejection,) = result.rejections
    assert (rejection.row, rejection.column, rejection.rule) == (2, None, "extra_cells")
    assert '"64"' in rejection.message and "quotes" in rejection.fix


def test_duplicate_id_rejects_the_later_row():
    result = parse(csv_text(["id", "prompt", "height"], ["a", "one", "7"], ["b", "two", "64"], ["a", "three", "64"]))
    assert [row.id for row in result.rows] == ["b"]
    first, second = result.rejections
    assert (first.row, first.rule) == (2, "size_not_multiple_of_16")
    assert (second.row, second.column, second.rule) == (4, "id", "duplicate_id")
    assert "line 2" in second.message


def test_empty_ids_are_not_duplicates():
    result = parse("id,prompt\n,one\n  ,two\n")
    assert [row.id for row in result.rows] == [None, None]


def test_one_rejection_per_bad_row_reporting_the_first_problem():
    result = parse(csv_text(["prompt", "height", "width"], ["", "x", "y"], ["ok", "64", "64"]))
    assert result.total_rows == len(result.rows) + len(result.rejections) == 2
    assert [rejection.rule for rejection in result.rejections] == ["empty_prompt"]


def test_invalid_run_default_is_reported_as_such():
    result = parse("prompt,height\na cat,\nb cat,64\n", defaults=RunDefaults(width=30))
    assert len(result.rejections) == 2
    rejection = result.rejections[0]
    assert (rejection.column, rejection.rule) == ("width", "size_not_multiple_of_16")
    assert "run default" in rejection.message


def test_unknown_model_fix_lists_known_models():
    rejection = only_rejection(single_cell_row("model", "Tiny-Wan"))
    assert "tiny-wan" in rejection.fix and "tiny-hunyuan" in rejection.fix


# --------------------------------------------------------------------------------------------------------------
# File-level errors
# --------------------------------------------------------------------------------------------------------------


def test_latin1_file_is_refused_naming_utf8_offset_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt\ncafé crème\n".encode("latin-1"))
    with pytest.raises(ManifestError) as raised:
        read_manifest(path, DEFAULTS, KNOWN_MODELS)
    message = str(raised.value)
    assert "UTF-8" in message and "offset 10" in message and "line 2" in message and str(path) in message


def test_utf8_error_offset_is_exact_after_many_chunks():
    data = b"prompt\n" + b"a cat\n" * 20_000 + b"\xff\n"
    with pytest.raises(ManifestError, match=f"offset {len(data) - 2} \\(line 20002\\)"):
        parse(data)


def test_text_with_lone_surrogate_is_not_utf8():
    with pytest.raises(ManifestError, match="UTF-8"):
        parse("prompt\na \ud800 cat\n")


def test_missing_prompt_column_lists_the_columns_found():
    with pytest.raises(ManifestError, match="no 'prompt' column") as raised:
        parse("id,text,height\n1,a cat,64\n")
    assert '"id", "text", "height"' in str(raised.value)


def test_binary_garbage_is_refused():
    garbage = random.Random(0).randbytes(20_000)
    with pytest.raises(ManifestError):
        parse(garbage)
    with pytest.raises(ManifestError, match="no 'prompt' column"):
        parse(bytes(range(1, 128)) * 50)


def test_nul_bytes_are_refused_naming_the_line():
    with pytest.raises(ManifestError, match="NUL byte on line 3"):
        parse(b"prompt\na cat\na \x00 dog\n")


def test_utf16_file_is_refused():
    with pytest.raises(ManifestError, match="UTF"):
        parse("prompt\na cat\n".encode("utf-16"))


@pytest.mark.parametrize("text", ["", "\n\n", " , \r\n", "\ufeff"])
def test_empty_file_is_refused(text):
    with pytest.raises(ManifestError, match="empty"):
        parse(text)


def test_duplicate_columns_are_refused():
    with pytest.raises(ManifestError, match='duplicate column names: "height"'):
        parse("prompt,Height,height \na,64,64\n")


def test_unclosed_quote_is_refused():
    with pytest.raises(ManifestError, match="line 3 that is never closed"):
        parse('prompt,height\na cat,64\n"a dog,64\nmore,64\n')


def test_too_many_rows(tmp_path):
    text = "prompt\n" + "a cat\n" * 3
    assert parse(text, limits=ManifestLimits(max_rows=3)).total_rows == 3
    with pytest.raises(ManifestError, match="more than 2 rows"):
        parse(text, limits=ManifestLimits(max_rows=2))


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="Cannot open manifest"):
        read_manifest(tmp_path / "nope.csv", DEFAULTS, KNOWN_MODELS)


def test_sha256_is_the_digest_of_the_raw_bytes(tmp_path):
    data = b'prompt,seed\r\n"a\ncat",1\r\nbad,-1\r\n'
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert read_manifest(path, DEFAULTS, KNOWN_MODELS).sha256 == expected
    assert parse(data).sha256 == expected
    assert parse(data.decode()).sha256 == expected


def test_prefect_task_wraps_read_manifest():
    assert read_manifest_task.fn is read_manifest
    assert read_manifest_task.name == "read-and-validate-manifest"


# --------------------------------------------------------------------------------------------------------------
# Property: any input gives a result or a ManifestError
# --------------------------------------------------------------------------------------------------------------

HEADER = "id,prompt,model,height,width,num_frames,num_inference_steps,guidance_scale,seed,num_videos,sequence_batch\n"
csv_ish_text = st.text(alphabet=st.sampled_from(list(',"\r\n \t0123456789.-+eE_xyzid\x00\ufeffé€\u2028tiny-wan')))
manifest_inputs = st.one_of(
    st.text(),
    st.binary(),
    csv_ish_text,
    csv_ish_text.map(lambda body: HEADER + body),
    st.binary().map(lambda body: HEADER.encode() + body),
)


@settings(max_examples=scaled(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifest_inputs)
def test_any_input_gives_a_result_or_a_manifest_error(data):
    try:
        result = parse(data)
    except ManifestError as error:
        assert str(error)
        return
    assert result.total_rows == len(result.rows) + len(result.rejections)
    for item in [*result.rows, *result.rejections]:
        assert item.row >= 2
    for rejection in result.rejections:
        assert rejection.rule and rejection.message and rejection.fix


# --- pinned plans and backends (columns `plan`, `backend`) ---


def test_plan_and_backend_columns_pin_a_row():
    from reelbatch.schemas import ParallelPlan

    text = "prompt,plan,backend\na cat,dp=1 cfg=2,xdit\na dog,,\n"
    result = parse_manifest_text(text, RunDefaults(), KNOWN_MODELS)
    assert [r.plan for r in result.rows] == [ParallelPlan(cfg=2), None]
    assert [r.backend for r in result.rows] == ["xdit", "native"]


def test_run_level_plan_is_the_default_for_empty_cells():
    from reelbatch.schemas import ParallelPlan

    defaults = RunDefaults(plan=ParallelPlan(dp=2), backend="native")
    result = parse_manifest_text("prompt,plan\na cat,\nb,ulysses=2\n", defaults, KNOWN_MODELS)
    assert [r.plan for r in result.rows] == [ParallelPlan(dp=2), ParallelPlan(ulysses=2)]


@pytest.mark.parametrize("cell,rule", [("dp=0", "bad_plan"), ("tp=2", "bad_plan"), ("dp=2,dp=2", "bad_plan")])
def test_bad_plan_cells_are_rejected_with_a_fix(cell, rule):
    result = parse_manifest_text(f'prompt,plan\na cat,"{cell}"\n', RunDefaults(), KNOWN_MODELS)
    [rejection] = result.rejections
    assert (rejection.column, rejection.rule) == ("plan", rule) and "dp=2,cfg=2" in rejection.fix


def test_unknown_backend_is_rejected():
    result = parse_manifest_text("prompt,backend\na cat,tensorrt\n", RunDefaults(), KNOWN_MODELS)
    [rejection] = result.rejections
    assert (rejection.column, rejection.rule) == ("backend", "unknown_backend") and "xdit" in rejection.fix


# --- JSONL and Parquet manifests: the same rows, rules and rejections as CSV ---


def _objects():
    return [
        {"id": "a", "prompt": "a cat", "height": 32, "guidance_scale": 1.0, "sequence_batch": True},
        {"id": "b", "prompt": "a dog", "num_frames": 6},
        {"id": "c", "prompt": "waves", "plan": "dp=2"},
    ]


def _check_same_as_csv(result):
    assert [r.id for r in result.rows] == ["a", "c"]
    assert result.rows[0].sequence_batch is True and result.rows[0].guidance_scale == 1.0
    [rejection] = result.rejections
    assert (rejection.row, rejection.column, rejection.rule) == (2, "num_frames", "frames_not_4k_plus_1")


def test_jsonl_manifest(tmp_path):
    import json

    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in _objects()) + "\n", encoding="utf-8")
    result = read_manifest(path, RunDefaults(), KNOWN_MODELS)
    _check_same_as_csv(result)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_manifest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    objects = _objects()
    columns = {key: [o.get(key) for o in objects] for o in objects for key in o}  # from_pylist reads row 1's keys only
    pq.write_table(pa.Table.from_pydict(columns), path)
    _check_same_as_csv(read_manifest(path, RunDefaults(), KNOWN_MODELS))


@pytest.mark.parametrize(
    "name,content",
    [("m.jsonl", b"[1, 2]\n"), ("m.jsonl", b"{not json\n"), ("m.parquet", b"PAR1 not really"), ("m.jsonl", b"")],
)
def test_broken_jsonl_and_parquet_give_one_clean_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ManifestError):
        read_manifest(path, RunDefaults(), KNOWN_MODELS)


def test_credentials_in_a_manifest_url_never_reach_messages():
    with pytest.raises(ManifestError) as caught:
        read_manifest("s3://AKIAEXAMPLE:secretvalue@no-such-bucket-reelbatch/x.csv", RunDefaults(), KNOWN_MODELS)
    assert "secretvalue" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


# Cells that pass and cells that fail, for every column: rows mixing them, with repeats, short and long rows and
# reused ids, must come out of the reader's fast path exactly as the row-by-row reference check makes them.
_CELLS = {
    "id": ["", "a", "b", " a ", "p\x00"],
    "prompt": ["a cat", " a dog ", "", "x" * 600, 'é "q"'],
    "negative_prompt": ["", "blurry", " blurry "],
    "model": ["tiny-wan", "tiny-hunyuan", "", "nope"],
    "height": ["32", "48", "", "33", "+32", "32.0", "0x10", "-16"],
    "width": ["32", "", "64.", "4096"],
    "num_frames": ["5", "9", "", "6"],
    "num_inference_steps": ["4", "", "0"],
    "guidance_scale": ["5", "1.0", "", "nan", "-1", ".5"],
    "embedded_guidance_scale": ["", "6", "x"],
    "seed": ["", "1", "42", "-1", str(MAX_SEED + 1), "1.0"],
    "num_videos": ["1", "2", "", "0"],
    "sequence_batch": ["", "true", "no", "maybe"],
    "plan": ["", "dp=2", "bad"],
    "backend": ["", "XDIT", "other"],
    "extra": ["", "x"],
}


@st.composite
def mostly_valid_manifests(draw) -> tuple[list[str], list[list[str]]]:
    columns = draw(st.permutations(list(_CELLS)))[: draw(st.integers(1, len(_CELLS)))]
    columns = columns if "prompt" in columns else [*columns, "prompt"]
    records = []
    for _ in range(draw(st.integers(0, 30))):
        good = draw(st.integers(0, 4)) > 0
        record = [draw(st.sampled_from(_CELLS[c][:2] if good else _CELLS[c])) for c in columns]
        records.append(record + draw(st.sampled_from([[], [], [], ["x"], [" "]])))
    return columns, records


@settings(max_examples=scaled(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mostly_valid_manifests(),
    st.sampled_from(
        [
            DEFAULTS,
            RunDefaults(model="tiny-hunyuan", num_frames=9, plan={"dp": 2}, sequence_batch=True),
            RunDefaults.model_construct(**{**DEFAULTS.model_dump(), "num_frames": 6}),  # a default that fails
            RunDefaults.model_construct(**{**DEFAULTS.model_dump(), "guidance_scale": None}),  # wrong type
        ]
    ),
)
def test_fast_row_checks_match_the_reference_row_by_row(manifest, defaults):
    columns, records = manifest
    header = _read_header(columns, "The manifest")
    context = _RowContext(
        defaults=defaults, limits=ManifestLimits(max_prompt_chars=500), known_models=frozenset(KNOWN_MODELS)
    )
    fast_ids: dict[str, int] = {}
    reference_ids: dict[str, int] = {}
    checker = _RowChecker(header, context, fast_ids)
    for line, record in enumerate(records, 2):
        fast = checker.check(record, line)
        reference = _check_record(record, line, header, context, reference_ids)
        assert type(fast) is type(reference) and fast == reference and repr(fast) == repr(reference)
        if isinstance(fast, ManifestRow):
            assert fast.model_fields_set == reference.model_fields_set
        assert fast_ids == reference_ids


# --------------------------------------------------------------------------------------------------------------
# Rejected rows' cells, read back for the database
# --------------------------------------------------------------------------------------------------------------


def test_rejected_row_values_keep_what_parses_and_drop_what_does_not():
    values = rejected_row_values(
        {
            "id": "r6",
            "prompt": "a dog",
            "height": "33",
            "width": "wide",
            "seed": " 12 ",
            "sequence_batch": "y",
            "guidance_scale": "5",
            "model": "tiny-wan",
            "cache": "fbc:oops",
            "extra": "x",
        }
    )
    assert values == {
        "model": "tiny-wan",
        "height": 33,
        "width": None,
        "num_frames": None,
        "num_inference_steps": None,
        "guidance_scale": 5.0,
        "embedded_guidance_scale": None,
        "guidance_scale_2": None,
        "seed": 12,
        "sequence_batch": True,
        "prompt": "a dog",
        "negative_prompt": "",
        "row_id": "r6",
        "image": None,
        "last_image": None,
        "cache": "fbc:oops",  # as written: the database shows what the rejected row asked for
        "lora": None,
        "lora_scale": None,
    }
    empty = rejected_row_values({})
    assert (empty["prompt"], empty["row_id"], empty["model"], empty["sequence_batch"]) == ("", None, None, None)
    assert rejected_row_values({"sequence_batch": "maybe", "seed": "1.5"})["sequence_batch"] is None


def test_rejected_row_values_read_the_cells_a_reading_kept():
    read = parse(csv_text(["id", "prompt", "height", "seed", "image"], ["a", "a cat", "33", "7", "frame.png"]))
    assert [r.rule for r in read.rejections] == ["size_not_multiple_of_16"]
    values = rejected_row_values(read.raw_rows[2])
    assert (values["row_id"], values["prompt"], values["height"], values["seed"], values["image"]) == (
        "a",
        "a cat",
        33,
        7,
        "frame.png",
    )


@pytest.mark.parametrize(
    ("cell", "recorded"),
    [
        ("none", None),
        (" FBC:0.05 ", "fbc:0.05"),
        ("fbc:oops", "fbc:oops"),
        ("magcache-" + "x" * 100, ("magcache-" + "x" * 100)[:64]),
    ],
)
def test_a_rejected_rows_cache_is_recorded_canonical_or_as_written_within_its_column(cell, recorded):
    assert rejected_row_values({"prompt": "a cat", "cache": cell})["cache"] == recorded
