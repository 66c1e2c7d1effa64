"""Image cells: only allowed places are read, refused cells are never opened, staged copies are verified."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reelbatch.engine.inputs import StagedImageError, open_staged, staged_path
from reelbatch.infra.images import (
    ImagePolicy,
    ImageProblem,
    ImageStager,
    StagedImage,
)
from tests.hypothesis_budget import scaled


def png_bytes(size=(8, 6), color=(200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def write_png(path: Path, size=(8, 6), color=(200, 30, 40)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(size, color)
    path.write_bytes(data)
    return data


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A manifest folder with images, a real PNG outside it (would be accepted if it were allowed) and a store."""
    manifest_dir = tmp_path / "data" / "m"
    manifest_dir.mkdir(parents=True)
    (manifest_dir / "run.csv").write_text("prompt,image\n")
    write_png(manifest_dir / "a.png")
    write_png(manifest_dir / "sub" / "b.jpg.png", size=(10, 4), color=(1, 2, 3))
    outside = tmp_path / "data" / "outside.png"
    write_png(outside, color=(9, 9, 9))
    return {"manifest": manifest_dir / "run.csv", "dir": manifest_dir, "outside": outside, "store": tmp_path / "store"}


def stager_for(layout, roots=(), **limits) -> ImageStager:
    return ImageStager(ImagePolicy.for_manifest(str(layout["manifest"]), roots, **limits), layout["store"])


def refused(stager: ImageStager, cell: str) -> ImageProblem:
    with pytest.raises(ImageProblem) as caught:
        stager.stage(cell)
    problem = caught.value
    assert problem.message and problem.fix and str(problem) == problem.message
    return problem


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every local path or URL opened from now on (os.open, builtins open, fsspec)."""
    seen: list[str] = []
    real_os_open, real_url_to_fs, real_fsspec_open = os.open, fsspec.core.url_to_fs, fsspec.open

    def os_open(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    def url_to_fs(url, *args, **kwargs):
        seen.append(url)
        return real_url_to_fs(url, *args, **kwargs)

    def fsspec_open(url, *args, **kwargs):
        seen.append(url)
        return real_fsspec_open(url, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(fsspec.core, "url_to_fs", url_to_fs)
    monkeypatch.setattr(fsspec, "open", fsspec_open)
    return seen


# ------------------------------------------------------------------------------------------------------------------
# Accepted images
# ------------------------------------------------------------------------------------------------------------------


def test_images_in_manifest_folder_and_subfolder_are_staged(layout):
    stager = stager_for(layout)
    a = stager.stage(str(layout["dir"] / "a.png"))
    b = stager.stage("sub/b.jpg.png")  # relative: against the manifest's folder, not the working directory
    for staged, file, size in ((a, layout["dir"] / "a.png", (8, 6)), (b, layout["dir"] / "sub" / "b.jpg.png", (10, 4))):
        data = file.read_bytes()
        assert staged.sha256 == hashlib.sha256(data).hexdigest()
        assert (staged.width, staged.height, staged.format) == (*size, "PNG")
        assert Path(staged.path) == layout["store"] / staged.sha256[:2] / staged.sha256
        assert Path(staged.path).read_bytes() == data
    assert b.url == "sub/b.jpg.png"
    assert a.sha256 != b.sha256


def test_jpeg_and_file_url(layout):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 7), (10, 200, 10)).save(buffer, "JPEG")
    (layout["dir"] / "c.jpg").write_bytes(buffer.getvalue())
    staged = stager_for(layout).stage(f"file://{layout['dir'] / 'c.jpg'}")
    assert (staged.format, staged.width, staged.height) == ("JPEG", 12, 7)


def test_same_bytes_under_two_names_are_one_image(layout):
    copy = layout["dir"] / "copy-of-a.png"
    copy.write_bytes((layout["dir"] / "a.png").read_bytes())
    stager = stager_for(layout)
    first, second = stager.stage("a.png"), stager.stage("copy-of-a.png")
    assert first.sha256 == second.sha256 and first.path == second.path
    assert first.url == "a.png" and second.url == "copy-of-a.png"
    assert [p.name for p in layout["store"].rglob("*") if p.is_file()] == [first.sha256]  # no temp files left


def test_repeated_cell_is_read_once(layout, opened):
    stager = stager_for(layout)
    assert stager.stage("a.png") == stager.stage("a.png")
    assert opened.count(str(layout["dir"] / "a.png")) == 1


def test_extra_local_root(layout, tmp_path):
    other = tmp_path / "library"
    write_png(other / "x.png", color=(50, 60, 70))
    assert stager_for(layout, roots=[str(other)]).stage(str(other / "x.png")).width == 8
    problem = refused(stager_for(layout), str(other / "x.png"))
    assert problem.rule == "image_not_allowed"
    assert str(layout["dir"]) in problem.message and "--image-root" in problem.fix


def test_symlink_inside_root_to_another_root_is_allowed(layout, tmp_path):
    other = tmp_path / "library"
    write_png(other / "x.png")
    (layout["dir"] / "link.png").symlink_to(other / "x.png")
    assert stager_for(layout, roots=[str(other)]).stage("link.png").format == "PNG"


# ------------------------------------------------------------------------------------------------------------------
# Refused before anything is opened
# ------------------------------------------------------------------------------------------------------------------


def test_outside_png_would_be_accepted_if_allowed(layout):
    """The control for the refusals below: it is the policy that refuses the outside file, not its content."""
    assert stager_for(layout, roots=[str(layout["outside"].parent)]).stage(str(layout["outside"])).format == "PNG"


@pytest.mark.parametrize(
    "make_cell",
    [
        lambda lay: "/etc/passwd",
        lambda lay: str(lay["outside"]),
        lambda lay: "../outside.png",
        lambda lay: "sub/../../outside.png",
        lambda lay: f"file://{lay['outside']}",
        lambda lay: "escape.png",  # a symlink inside the root that points outside it
        lambda lay: "escape-dir/outside.png",  # a folder symlink inside the root that points outside it
        lambda lay: str(lay["dir"]) + "2/sibling.png",  # /data/m2 shares the prefix of /data/m, but is not inside it
    ],
    ids=["etc-passwd", "absolute-outside", "dotdot", "dotdot-via-sub", "file-url", "symlink", "dir-symlink", "sibling"],
)
def test_local_escapes_are_refused_and_never_opened(layout, opened, make_cell):
    (layout["dir"] / "escape.png").symlink_to(layout["outside"])
    (layout["dir"] / "escape-dir").symlink_to(layout["outside"].parent)
    write_png(Path(str(layout["dir"]) + "2") / "sibling.png")
    problem = refused(stager_for(layout), make_cell(layout))
    assert problem.rule == "image_not_allowed"
    assert str(layout["dir"]) in problem.message  # says where images may come from
    assert opened == []
    assert not layout["store"].exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize(
    "cell, rule", [("escape-dir/outside.png", "image_not_allowed"), ("escape.png", "image_missing")]
)
def test_symlink_swapped_in_after_the_check_is_caught(layout, monkeypatch, cell, rule):
    """The race between realpath() and open(): simulated by a realpath that misses the symlinks, as if they were
    swapped in right after the check. The kernel's view of the opened file (or O_NOFOLLOW) still refuses it."""
    (layout["dir"] / "escape.png").symlink_to(layout["outside"])
    (layout["dir"] / "escape-dir").symlink_to(layout["outside"].parent)
    stager = stager_for(layout)
    monkeypatch.setattr(os.path, "realpath", os.path.abspath)
    assert refused(stager, cell).rule == rule
    assert not layout["store"].exists()


@pytest.mark.parametrize(
    "cell, rule",
    [
        ("http://example.com/a.png", "image_scheme_not_allowed"),
        ("https://example.com/a.png", "image_scheme_not_allowed"),
        ("memory://a.png", "image_scheme_not_allowed"),
        ("simplecache::s3://bucket/images/a.png", "image_scheme_not_allowed"),
        ("simplecache::/etc/passwd", "image_scheme_not_allowed"),
        ("zip://a.png::file:///tmp/x.zip", "image_scheme_not_allowed"),
        ("s3://bucket/images/a.png::memory://a.png", "image_scheme_not_allowed"),
    ],
)
def test_other_schemes_are_refused_and_never_opened(layout, opened, cell, rule):
    fsspec.filesystem("memory").pipe("/a.png", png_bytes())  # would decode fine if memory:// were allowed
    assert refused(stager_for(layout, roots=["s3://bucket/images/"]), cell).rule == rule
    assert opened == []


def test_local_files_refused_when_only_remote_places_are_allowed(tmp_path, opened):
    write_png(tmp_path / "a.png")
    stager = ImageStager(ImagePolicy.for_manifest("<inline>", ["s3://bucket/images/"]), tmp_path / "store")
    problem = refused(stager, str(tmp_path / "a.png"))
    assert problem.rule == "image_scheme_not_allowed" and "s3://bucket/images/" in problem.fix
    assert opened == []


def test_inline_manifest_refuses_relative_paths(tmp_path, opened, monkeypatch):
    write_png(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)  # a relative cell must not silently resolve against the working directory
    stager = ImageStager(ImagePolicy.for_manifest("<inline>", [str(tmp_path)]), tmp_path / "store")
    assert refused(stager, "a.png").rule == "image_relative_without_base"
    assert opened == []
    assert stager.stage(str(tmp_path / "a.png")).format == "PNG"


def test_inline_manifest_without_roots_allows_nothing(tmp_path):
    write_png(tmp_path / "a.png")
    stager = ImageStager(ImagePolicy.for_manifest("<inline>"), tmp_path / "store")
    assert stager.policy.roots == ()
    assert refused(stager, str(tmp_path / "a.png")).rule == "image_scheme_not_allowed"


@settings(max_examples=scaled(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["..", ".", "sub", "escape-dir", "escape.png", "a.png", "outside.png", ""]),
        min_size=1,
        max_size=6,
    )
)
def test_any_relative_path_stays_inside_the_root(layout, monkeypatch, segments):
    """Whatever mix of '..', symlinks and names a cell holds, nothing outside the manifest folder is opened."""
    if not (layout["dir"] / "escape.png").is_symlink():
        (layout["dir"] / "escape.png").symlink_to(layout["outside"])
        (layout["dir"] / "escape-dir").symlink_to(layout["outside"].parent)
    seen: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: seen.append(os.fspath(path)) or real_open(path, *a, **k))
    try:
        staged = stager_for(layout).stage("/".join(segments))
    except ImageProblem:
        staged = None
    inside = [p for p in seen if Path(p).resolve().is_relative_to(layout["dir"]) or p.startswith(str(layout["store"]))]
    assert seen == inside
    if staged is not None:
        assert Path(staged.path).read_bytes() == (layout["dir"] / "a.png").read_bytes()


# ------------------------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------------------------


def test_missing_file_and_folder(layout):
    stager = stager_for(layout)
    assert refused(stager, "nope.png").rule == "image_missing"
    assert refused(stager, "sub").rule == "image_missing"


def test_missing_is_cached_but_raised_each_time(layout):
    stager = stager_for(layout)
    first, second = refused(stager, "nope.png"), refused(stager, "nope.png")
    assert first is not second and (first.rule, first.message) == (second.rule, second.message)


@pytest.mark.parametrize(
    "content",
    [b"root:x:0:0:root:/root:/bin/bash\n", png_bytes()[:-20], png_bytes()[:40]],
    ids=["text", "truncated-end", "truncated-header"],
)
def test_not_decodable(layout, content):
    (layout["dir"] / "bad.png").write_bytes(content)
    assert refused(stager_for(layout), "bad.png").rule == "image_not_decodable"
    assert not layout["store"].exists()


def test_truncated_jpeg_is_not_decodable(layout):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    (layout["dir"] / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert refused(stager_for(layout), "cut.jpg").rule == "image_not_decodable"


def test_too_many_bytes(layout):
    size = (layout["dir"] / "a.png").stat().st_size
    assert stager_for(layout, max_bytes=size).stage("a.png").format == "PNG"  # the limit itself is fine
    problem = refused(stager_for(layout, max_bytes=size - 1), "a.png")
    assert problem.rule == "image_too_large" and str(size) in problem.message


def test_huge_sparse_file_refused_from_its_size(layout):
    with open(layout["dir"] / "huge.png", "wb") as handle:
        handle.truncate(64 * 1024**3)  # sparse: reading it whole would take minutes and 64 GiB
    assert refused(stager_for(layout), "huge.png").rule == "image_too_large"


@pytest.mark.parametrize("size", [(17, 4), (4, 17)])
def test_side_over_limit(layout, size):
    write_png(layout["dir"] / "wide.png", size=size)
    assert refused(stager_for(layout, max_side=16), "wide.png").rule == "image_too_large"
    assert stager_for(layout, max_side=17).stage("wide.png").width == size[0]


def test_decompression_bomb_refused_before_decoding(layout):
    # 30000x30000 pixels of one colour compress to a few hundred kB; decoding would need 2.7 GB.
    Image.new("1", (30000, 30000)).save(layout["dir"] / "bomb.png")
    problem = refused(stager_for(layout), "bomb.png")
    assert problem.rule == "image_too_large" and "pixels" in problem.message


# ------------------------------------------------------------------------------------------------------------------
# The ranks' side: open_staged
# ------------------------------------------------------------------------------------------------------------------


def load_staged(path: str, sha256: str):
    assert Path(path) == staged_path(Path(path).parent.parent, sha256)  # the store layout the ranks read
    return open_staged(Path(path).parent.parent, sha256)


def test_load_staged_returns_rgb_and_refuses_changed_bytes(layout):
    (layout["dir"] / "gray.png").write_bytes(b"")
    Image.new("L", (5, 3), 77).save(layout["dir"] / "gray.png")
    staged: StagedImage = stager_for(layout).stage("gray.png")
    image = load_staged(staged.path, staged.sha256)
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (5, 3), (77, 77, 77))
    Path(staged.path).write_bytes(png_bytes((5, 3), (0, 0, 0)))  # still a valid image, but not the one staged
    with pytest.raises(StagedImageError) as caught:
        load_staged(staged.path, staged.sha256)
    assert caught.value.rule == "image_changed"
    Path(staged.path).unlink()
    with pytest.raises(StagedImageError) as caught:
        load_staged(staged.path, staged.sha256)
    assert caught.value.rule == "image_missing"


def test_restaging_repairs_a_damaged_store_copy(layout):
    stager = stager_for(layout)
    staged = stager.stage("a.png")
    Path(staged.path).write_bytes(b"damaged")
    again = stager_for(layout).stage("a.png")  # a new stager: no per-cell cache
    assert load_staged(again.path, again.sha256).size == (8, 6)


# ------------------------------------------------------------------------------------------------------------------
# S3 (moto server)
# ------------------------------------------------------------------------------------------------------------------


def s3_put(url: str, data: bytes) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).pipe(url, data)


def test_s3_image_under_allowed_root_is_staged(s3_bucket, tmp_path):
    data = png_bytes((9, 5))
    s3_put(f"s3://{s3_bucket}/images/a.png", data)
    s3_put(f"s3://{s3_bucket}/images2/a.png", data)
    s3_put(f"s3://{s3_bucket}/other/a.png", data)
    stager = ImageStager(ImagePolicy.for_manifest("<inline>", [f"s3://{s3_bucket}/images"]), tmp_path / "store")
    staged = stager.stage(f"s3://{s3_bucket}/images/a.png")
    assert (staged.sha256, staged.width, staged.height) == (hashlib.sha256(data).hexdigest(), 9, 5)
    assert Path(staged.path).read_bytes() == data
    for cell in (
        f"s3://{s3_bucket}/other/a.png",
        f"s3://{s3_bucket}/images2/a.png",
        f"s3://{s3_bucket}/images/../other/a.png",
        f"s3://{s3_bucket}/images//a.png",
        f"s3://{s3_bucket}/images/%2e%2e/other/a.png",
    ):
        problem = refused(stager, cell)
        assert problem.rule == "image_not_allowed" and f"s3://{s3_bucket}/images/" in problem.message
    assert refused(stager, f"s3://{s3_bucket}/images/missing.png").rule == "image_missing"


def test_s3_image_next_to_manifest_is_allowed_by_default(s3_bucket, tmp_path):
    data = png_bytes((3, 3))
    s3_put(f"s3://{s3_bucket}/m/a.png", data)
    s3_put(f"s3://{s3_bucket}/elsewhere/a.png", data)
    policy = ImagePolicy.for_manifest(f"s3://{s3_bucket}/m/run.csv")
    assert policy.roots == (f"s3://{s3_bucket}/m/",) and policy.base == f"s3://{s3_bucket}/m/"
    stager = ImageStager(policy, tmp_path / "store")
    assert stager.stage(f"s3://{s3_bucket}/m/a.png").sha256 == hashlib.sha256(data).hexdigest()
    assert stager.stage("a.png").path == stager.stage(f"s3://{s3_bucket}/m/a.png").path  # relative: next to it
    assert refused(stager, "../elsewhere/a.png").rule == "image_not_allowed"
    assert refused(stager, f"s3://{s3_bucket}/elsewhere/a.png").rule == "image_not_allowed"
    assert refused(stager, "/etc/passwd").rule == "image_scheme_not_allowed"


def test_s3_credentials_in_url_are_refused_and_never_shown(s3_bucket, tmp_path, opened):
    stager = ImageStager(ImagePolicy.for_manifest("<inline>", [f"s3://{s3_bucket}/images/"]), tmp_path / "store")
    for cell in (f"s3://user:secret@{s3_bucket}/images/a.png", f"simplecache::s3://user:secret@{s3_bucket}/i/a.png"):
        problem = refused(stager, cell)
        assert problem.rule == "image_credentials_in_url"
        for text in (problem.message, problem.fix, str(problem)):
            assert "secret" not in text and "user:secret" not in text
    assert opened == []


def test_manifest_url_credentials_do_not_leak_into_roots(s3_bucket):
    policy = ImagePolicy.for_manifest(f"s3://user:secret@{s3_bucket}/m/run.csv")
    assert policy.roots == (f"s3://{s3_bucket}/m/",)


def test_s3_size_checked_from_metadata_before_download(s3_bucket, tmp_path, monkeypatch):
    import s3fs

    s3_put(f"s3://{s3_bucket}/images/a.png", png_bytes((40, 40)))

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded a file already known to be too large")

    monkeypatch.setattr(s3fs.S3FileSystem, "_open", no_download)
    policy = ImagePolicy.for_manifest("<inline>", [f"s3://{s3_bucket}/images/"], max_bytes=10)
    problem = refused(ImageStager(policy, tmp_path / "store"), f"s3://{s3_bucket}/images/a.png")
    assert problem.rule == "image_too_large"


def test_bad_roots_are_rejected():
    with pytest.raises(ValueError) as caught:
        ImagePolicy.for_manifest(None, ["s3://user:secret@bucket/images/"])
    assert "secret" not in str(caught.value)
    for root in ("simplecache::s3://bucket/images/", "s3://bucket/a/../b/", "s3:///images/"):
        with pytest.raises(ValueError):
            ImagePolicy.for_manifest(None, [root])
