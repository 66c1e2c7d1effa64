"""The columnar fast path (manifest.columnar, rows.RowTable, plan_run over a table) against the line reader.

The line reader and the list form of ``plan_run`` are the reference: for any manifest the fast path must return
the same rows, rejections (rule, message, fix, line), row counts, raw cells and digest, or raise the same
ManifestError, and plans made from either form must hold the same jobs, samples and rejections. The generator
below writes mostly regular files with the problems real manifests have (bad cells, spaces to strip, quotes,
commas, non-ASCII text, duplicate ids and videos, blank lines, CRLF, quoted line breaks, ragged rows, a BOM).
"""

from __future__ import annotations

import csv
import io
import pickle
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelbatch.manifest import (
    ManifestError,
    ManifestReadResult,
    parse_manifest_text,
)
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.planner import plan_run
from reelbatch.rows import RowTable, SampleRefs
from reelbatch.schemas import RunDefaults
from tests.hypothesis_budget import scaled
from tests.manifest_fuzz import KNOWN_MODELS, LIMITS, hostile_manifests

DEFAULTS = RunDefaults()
CATALOG = ModelCatalog.from_config()

CELLS = {
    "id": st.sampled_from(["", "<unique>", "<unique>", "<unique>", "<unique>", "a", " c", "é"]),
    "prompt": st.one_of(
        st.sampled_from(
            [
                "a cat",
                "a dog, running",
                'say "hi"',
                " padded ",
                "tail\u3000",
                "\xa0lead",
                "中文提示",
                "",
                "   ",
                "x" * 501,
                "é" * 500,
                "=1+1",
                'ok,"quoted",text',
            ]
        ),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    ),
    "negative_prompt": st.sampled_from(["", "blurry", " blurry ", "low, quality", "é" * 501]),
    "model": st.sampled_from(
        ["tiny-wan", "tiny-hunyuan", "", " tiny-wan", "nope", "tiny-wan2.2-a14b", "skyreels-v1-t2v", "wan2.1-t2v-14b"]
    ),
    "height": st.sampled_from(["32", "", "48", "33", " 32", "32.0", "+32", "abc", "0"]),
    "width": st.sampled_from(["32", "", "64", "-16", "1e3"]),
    "num_frames": st.sampled_from(["5", "", "9", "6", "5.0"]),
    "num_inference_steps": st.sampled_from(["2", "", "0", "3"]),
    "guidance_scale": st.sampled_from(["5", "", "1", "5.0", "nan", "-1", "1.0"]),
    "seed": st.sampled_from(
        ["", "0", "7", "0012", " 7", "-1", "99999999999999999999", "1.0", "x", "123456789012345678"]
    ),
    "num_videos": st.sampled_from(["", "1", "2", "3", "0", "65"]),
    "sequence_batch": st.sampled_from(["", "true", "false", "maybe", "1"]),
    "plan": st.sampled_from(["", "dp=1", "dp=2", "ulysses=3", "bogus"]),
    "backend": st.sampled_from(["", "native", "xdit", "other"]),
    "guidance_scale_2": st.sampled_from(["", "3", "-2", "1.5"]),
    "embedded_guidance_scale": st.sampled_from(["", "6", "abc"]),
    "image": st.sampled_from(
        [
            "",
            "a.png",
            " a.png ",
            "s3://b/x.png",
            "s3://k:secret@b/x.png",
            "me@2x.png",
            "https://h/x.png?sig=1",
            "what?.png",
        ]
    ),
    "last_image": st.sampled_from(["", "", "z.png", "s3://b/z.png?x"]),
}


def _csv_line(cells: list[str], always_quote: bool) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_ALL if always_quote else csv.QUOTE_MINIMAL).writerow(cells)
    return buffer.getvalue()


@st.composite
def regular_manifests(draw) -> bytes:
    """Manifests as tools write them, with a few rows and lines that are not regular."""
    columns = draw(st.lists(st.sampled_from(list(CELLS) + ["note"]), min_size=1, max_size=9, unique=True))
    if "prompt" not in columns:
        columns.insert(draw(st.integers(0, len(columns))), "prompt")
    always_quote = draw(st.booleans())
    lines = [_csv_line(columns, False)]
    irregular = draw(st.booleans())  # ragged rows and repeated lines send the file to the line reader
    for number in range(draw(st.integers(0, 25))):
        kinds = ["row"] * 12 + ["blank", "commas"] + ["extra", "short", "repeat", "lines"] * irregular
        kind = draw(st.sampled_from(kinds))
        if kind == "blank":
            lines.append("")
        elif kind == "commas":
            lines.append("," * (len(columns) - 1))
        elif kind == "repeat" and len(lines) > 1:
            lines.append(lines[draw(st.integers(1, len(lines) - 1))])
        else:
            cells = [draw(CELLS[c]) if c in CELLS else draw(st.sampled_from(["", "n", "x,y"])) for c in columns]
            cells = [f"r{number}" if cell == "<unique>" else cell for cell in cells]
            if kind == "lines":
                cells[columns.index("prompt")] = "two\nlines"
            elif kind == "extra":
                cells.append(draw(st.sampled_from(["", "more"])))
            elif kind == "short" and len(cells) > 1:
                cells.pop()
            lines.append(_csv_line(cells, always_quote))
    ending = draw(st.sampled_from(["\n", "\r\n", "\n", "\r\n", "\n", "\r"]))
    text = ending.join(lines) + draw(st.sampled_from(["", ending, ending * 2]))
    if irregular and draw(st.booleans()):
        text += draw(st.sampled_from(['"never closed', 'x,"never closed', '"closed"']))
    data = text.encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if draw(st.booleans()) else data


def _read(data: bytes, columnar: bool) -> ManifestReadResult | str:
    try:
        return parse_manifest_text(data, DEFAULTS, CATALOG, LIMITS, columnar=columnar)
    except ManifestError as error:
        return f"ManifestError: {error}"


def assert_same_reading(data: bytes) -> ManifestReadResult | str:
    fast, reference = _read(data, True), _read(data, False)
    if isinstance(reference, str) or isinstance(fast, str):
        assert fast == reference
        return fast
    assert list(fast.rows) == list(reference.rows)
    assert fast.rejections == reference.rejections
    assert (fast.total_rows, fast.raw_rows, fast.sha256, fast.source) == (
        reference.total_rows,
        reference.raw_rows,
        reference.sha256,
        reference.source,
    )
    return fast


def _plan_doc(plan) -> dict:
    return {
        "rows": plan.rows,
        "accepted": plan.accepted,
        "rejected": sorted((r.row, r.rule, r.message, r.fix) for r in plan.rejected),
        "jobs": [
            (
                job.job_id,
                job.bucket,
                job.plan,
                list(job.samples),
                job.padded_slots,
                job.filled_slots,
                job.estimated_seconds,
                job.estimated_gpu_seconds,
            )
            for job in plan.jobs
        ],
    }


def assert_same_plan(read: ManifestReadResult, **options) -> None:
    as_list = list(read.rows)
    fast = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 2, 3, device="cpu", **options)
    reference = plan_run(as_list, read.rejections, read.total_rows, CATALOG, 2, 3, device="cpu", **options)
    assert _plan_doc(fast) == _plan_doc(reference)


@settings(max_examples=scaled(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regular_manifests())
def test_the_fast_path_reads_regular_manifests_like_the_line_reader(data):
    assert_same_reading(data)


@settings(max_examples=scaled(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_manifests)
def test_the_fast_path_reads_hostile_bytes_like_the_line_reader(data):
    assert_same_reading(data)


@settings(max_examples=scaled(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regular_manifests(), st.sampled_from([None, "pad", "fill"]))
def test_plans_from_a_row_table_equal_plans_from_the_rows(data, packing):
    read = _read(data, True)
    if isinstance(read, str):
        return
    options = {} if packing is None else {"packing": PackingOptions(padding=packing, target_seconds=60)}
    assert_same_plan(read, **options)


def _manifest(rows: list[list[object]], header=("id", "prompt", "seed", "num_videos")) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def test_a_regular_manifest_takes_the_fast_path_and_keeps_its_line_numbers():
    data = _manifest(
        [[f"p{i}", f"prompt {i}, with a comma", i, 1 + i % 3] for i in range(50)]
        + [["bad", "a bad row", "-1", 1], ["sp", "  spaced prompt  ", 3, 1]]
    )
    read = assert_same_reading(data)
    assert isinstance(read.rows, RowTable)
    assert len(read.rows) == 51 and [r.rule for r in read.rejections] == ["seed_out_of_range"]
    assert read.rejections[0].row == 52  # header is line 1
    assert read.rows[-1].prompt == "spaced prompt" and read.rows[-1].row == 53


@pytest.mark.parametrize(
    "data",
    [
        b'prompt,seed\n"two\nlines",1\nb,2\n',  # a quoted line break
        b"prompt,seed\ra,1\rb,2\r",  # lone carriage returns
        b"id,prompt\nx,a\nx,b\n",  # an id used twice
        b"prompt,seed\na,1,extra\n",  # a ragged row
        b'"prompt",seed\na,1\n',  # a quoted header
        b'prompt,seed\nx,1\ny,"12',  # a quote left open at the end of the file
        b'prompt\nx\n"abc',
    ],
)
def test_irregular_files_go_to_the_line_reader_with_the_same_result(data):
    read = assert_same_reading(data)
    assert isinstance(read, str) or not isinstance(read.rows, RowTable)


def test_blank_lines_keep_the_fast_path_and_the_line_numbers():
    read = assert_same_reading(b"prompt,seed\na,1\n\n,\nb,2\n\n")
    assert isinstance(read.rows, RowTable)
    assert [r.row for r in read.rows] == [2, 5] and read.total_rows == 2


def test_repeated_prompts_are_checked_for_repeated_videos_like_the_rows():
    data = _manifest(
        [
            ["a", "same prompt", 1, 2],
            ["b", "same prompt", 2, 1],
            ["c", "other", 1, 1],
            ["d", " same prompt", 5, 1],
            ["e", "same prompt", 5, 1],
            ["f", "same prompt", 1, 1],
        ]
    )
    read = assert_same_reading(data)
    assert isinstance(read.rows, RowTable) and read.rows.overrides  # row d was stripped one by one
    plan = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 1, device="cpu")
    assert sorted(r.row for r in plan.rejected if r.rule == "duplicate_sample") == [6, 7]
    assert_same_plan(read)


def test_sample_refs_become_samples_when_read_or_pickled():
    data = _manifest([[f"p{i}", f"prompt {i}", i * 10, 2] for i in range(6)])
    read = assert_same_reading(data)
    plan = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 1, 4, device="cpu")
    job = plan.jobs[0]
    assert isinstance(job.samples, SampleRefs) and len(job.samples) == 4
    assert [s.video_index for s in job.samples] == [0, 1, 0, 1]
    assert [s.seed for s in job.samples] == [0, 1, 10, 11]
    copied = pickle.loads(pickle.dumps(job.samples))
    assert type(copied) is list and copied == list(job.samples)
    half = job.samples[1:3]
    assert isinstance(half, SampleRefs) and list(half) == list(job.samples)[1:3]


def test_a_row_table_survives_pickling_with_its_rows():
    data = _manifest([[f"p{i}", f" prompt {i} " if i % 3 == 0 else f"prompt {i}", i, 1] for i in range(9)])
    read = assert_same_reading(data)
    assert isinstance(read.rows, RowTable) and read.rows.overrides
    copied = pickle.loads(pickle.dumps(read.rows))
    assert list(copied) == list(read.rows)


def test_a_manifest_over_the_size_limit_is_streamed_with_the_same_result(monkeypatch, tmp_path):
    import reelbatch.manifest.read as manifest

    path = tmp_path / "big.csv"
    path.write_bytes(_manifest([[f"p{i}", f"prompt {i}", i, 1] for i in range(300)] + [["x", "", 1, 1]]))
    whole = manifest.read_manifest(path, DEFAULTS, KNOWN_MODELS, LIMITS)
    monkeypatch.setattr(manifest, "COLUMNAR_MAX_BYTES", 1000)  # the first 1001 bytes are read, then streamed
    streamed = manifest.read_manifest(path, DEFAULTS, KNOWN_MODELS, LIMITS)
    assert isinstance(whole.rows, RowTable) and isinstance(streamed.rows, list)
    assert list(whole.rows) == streamed.rows and whole.rejections == streamed.rejections
    assert whole.sha256 == streamed.sha256 and streamed.total_rows == 301


def test_a_cell_over_the_csv_field_limit_is_rejected_in_a_fresh_process():
    # csv's per-process field limit is raised by whichever reader runs first: here only the fast path runs.
    script = (
        "from reelbatch.schemas import RunDefaults\n"
        "from reelbatch.manifest import parse_manifest_text\n"
        "data = b'prompt,seed\\nok,1\\n' + b'x' * 200_000 + b',2\\n'\n"
        "read = parse_manifest_text(data, RunDefaults(), {'tiny-wan'})\n"
        "print(type(read.rows).__name__, [r.rule for r in read.rejections])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RowTable", "['prompt_too_long']"]


def test_equal_values_written_differently_share_a_bucket_keyed_by_the_first_accepted_row():
    data = b"prompt,guidance_scale,seed\nr,0,-1\na,-0,1\nb,0,2\n"  # row r is rejected (seed)
    read = assert_same_reading(data)
    plan = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 1, device="cpu")
    assert len(plan.jobs) == 1 and str(plan.jobs[0].bucket.guidance_scale) == "-0.0"
    assert [s.row for s in plan.jobs[0].samples] == [3, 4]
    assert_same_plan(read)


def test_reads_compare_equal_whichever_reader_made_them():
    data = _manifest([["a", "one", 1, 1], ["b", "two", 2, 2]])
    assert _read(data, True) == _read(data, False)


def test_a_job_given_new_samples_gets_its_own_id():
    data = _manifest([[f"p{i}", f"prompt {i}", i, 1] for i in range(4)])
    read = assert_same_reading(data)
    job = plan_run(read.rows, read.rejections, read.total_rows, CATALOG, 1, 4, device="cpu").jobs[0]
    first = job.job_id
    shorter = replace(job, samples=job.samples[:2])
    assert shorter.job_id != first and replace(job).job_id == first
