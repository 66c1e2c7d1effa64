"""Hostile manifests for fuzzing the reader: used by tests/test_manifest_fuzz.py (CI) and bench/fuzz_manifest.py.

The property: whatever the bytes, the reader returns rows and clean row rejections, or raises one ManifestError;
no other exception, no traceback, and every rejection says what is wrong and how to fix it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from reelbatch.manifest import ManifestError, ManifestLimits, parse_manifest_text
from reelbatch.schemas import RunDefaults

COLUMNS = [
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
]
KNOWN_MODELS = {"tiny-wan", "tiny-hunyuan"}
LIMITS = ManifestLimits(max_prompt_chars=500, max_rows=2000)

nasty_text = st.one_of(
    st.text(max_size=40),  # unicode of every kind, in every column
    st.sampled_from(
        [
            "=1+1",
            "+cmd",
            "-2",
            "@SUM(A1)",
            "\x00",
            "\ufeff",
            '"',
            '""',
            "\r\n",
            "\u2028",
            "NaN",
            "inf",
            "1e400",
            "-0",
            "0x10",
            "１６",
            "32.0",
            " 32 ",
            "true",
            "dp=2,cfg=2",
            "ulysses=3",
            "xdit",
            "tiny-wan",
            "../../etc/passwd",
            "$(rm -rf /)",
            "'; DROP TABLE samples;--",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(min_size=400, max_size=700),  # around the prompt length limit
)


def _quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@st.composite
def csv_manifests(draw) -> bytes:
    header = draw(st.lists(st.sampled_from(COLUMNS + ["extra", "PROMPT", " prompt "]), min_size=1, max_size=8))
    rows = draw(st.lists(st.lists(nasty_text, max_size=len(header) + 2), max_size=12))
    quote = draw(st.sampled_from(["always", "never", "random"]))

    def cell(text: str) -> str:
        if quote == "always" or (quote == "random" and draw(st.booleans())):
            return _quote(text)
        return text

    line_end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = line_end.join(",".join(cell(c) for c in row) for row in [header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):  # chaos: cut, splice, or inject raw bytes
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.binary(max_size=8)) + data[position + draw(st.integers(0, 4)) :]
    return data


hostile_manifests = st.one_of(csv_manifests(), st.binary(max_size=300), st.text(max_size=300).map(str.encode))


def check_reader(data: bytes) -> None:
    """Raises AssertionError if the reader misbehaves on ``data``."""
    try:
        result = parse_manifest_text(data, RunDefaults(), KNOWN_MODELS, LIMITS)
    except ManifestError as error:
        assert str(error).strip(), "a ManifestError says what is wrong"
        return
    assert result.total_rows == len(result.rows) + len(result.rejections)
    for rejection in result.rejections:
        assert rejection.rule and rejection.message and rejection.fix
    for row in result.rows:
        assert row.prompt.strip() and "\x00" not in row.prompt
        assert row.height % 16 == 0 and row.width % 16 == 0 and (row.num_frames - 1) % 4 == 0
