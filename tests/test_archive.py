"""Archive directories: created and cleared only strictly below the archive root."""
from __future__ import annotations

import pytest

from reactor import archive
from reactor.errors import ArchiveError


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "archive"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path):
    """A directory next to the root, holding data that must survive every refusal."""
    o = tmp_path / "precious"
    o.mkdir()
    (o / "keep.txt").write_text("do not delete")
    (o / "sub").mkdir()
    (o / "sub" / "deep.txt").write_text("nor this")
    return o


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _fill(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "a.txt").write_text("a")
    (path / "nested" / "more").mkdir(parents=True)
    (path / "nested" / "more" / "b.txt").write_text("b")
    (path / ".hidden").write_text("h")


def test_default_path_is_deterministic_and_below_the_root(root):
    p = archive.default_path(root, "106aaaa-bb", "107cc-dd")
    assert p == str(root / "products" / "v2" / "106aaaabb" / "107ccdd")
    assert archive.is_confined(root, p)


def test_ensure_archive_creates_the_directory_and_is_idempotent(root):
    target = root / "products" / "v2" / "p" / "j"
    assert archive.ensure_archive(root, target) == target.resolve()
    assert target.is_dir()
    (target / "f").write_text("x")
    archive.ensure_archive(root, target)
    assert (target / "f").read_text() == "x"


def test_relative_paths_are_taken_below_the_root(root):
    made = archive.ensure_archive(root, "jobs/one")
    assert made == (root / "jobs" / "one").resolve() and made.is_dir()


@pytest.mark.parametrize("make", [
    lambda root, out: out,                             # plainly outside
    lambda root, out: root / ".." / out.name,          # dot-dot traversal
    lambda root, out: root,                            # the root itself
    lambda root, out: root.parent,                     # an ancestor of the root
    lambda root, out: "../" + out.name,                # relative escape
    lambda root, out: "/",
])
def test_ensure_archive_refuses_paths_not_strictly_below_the_root(root, outside, make):
    with pytest.raises(ArchiveError):
        archive.ensure_archive(root, make(root, outside))
    assert not archive.is_confined(root, make(root, outside))


def test_clear_archive_removes_contents_and_keeps_the_directory(root):
    job = root / "products" / "v2" / "p" / "j"
    _fill(job)
    sibling = root / "products" / "v2" / "p" / "other"
    _fill(sibling)
    assert archive.clear_archive(root, job) == 3
    assert job.is_dir() and list(job.iterdir()) == []
    assert _tree(sibling) == [".hidden", "a.txt", "nested", "nested/more", "nested/more/b.txt"]


def test_clear_archive_creates_a_missing_directory(root):
    job = root / "not" / "yet"
    assert archive.clear_archive(root, job) == 0
    assert job.is_dir()


def test_clear_archive_outside_the_root_is_refused_and_deletes_nothing(root, outside):
    before = _tree(outside)
    with pytest.raises(ArchiveError) as info:
        archive.clear_archive(root, outside)
    assert "outside the archive root" in str(info.value)
    assert _tree(outside) == before


def test_clear_archive_of_the_root_itself_is_refused(root):
    _fill(root / "job")
    with pytest.raises(ArchiveError) as info:
        archive.clear_archive(root, root)
    assert "root itself" in str(info.value)
    assert (root / "job" / "a.txt").exists()


def test_symlink_escape_is_refused_and_deletes_nothing(root, outside):
    link = root / "products" / "escape"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    before = _tree(outside)
    with pytest.raises(ArchiveError):
        archive.clear_archive(root, link)
    with pytest.raises(ArchiveError):
        archive.clear_archive(root, link / "sub")  # through the link, one level down
    assert _tree(outside) == before


def test_symlinked_parent_escape_is_refused(root, outside):
    (root / "p").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArchiveError):
        archive.ensure_archive(root, root / "p" / "new-job")
    assert not (outside / "new-job").exists()


def test_symlinks_inside_the_archive_are_removed_not_followed(root, outside):
    job = root / "job"
    _fill(job)
    (job / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (job / "link-to-file").symlink_to(outside / "keep.txt")
    before = _tree(outside)
    archive.clear_archive(root, job)
    assert list(job.iterdir()) == []
    assert _tree(outside) == before


def test_a_symlinked_root_is_judged_by_its_real_location(tmp_path, root):
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    job = root / "job"
    _fill(job)
    assert archive.clear_archive(alias, alias / "job") == 3
    assert archive.is_confined(alias, job)


def test_clear_archive_refuses_a_file(root):
    f = root / "file.txt"
    f.write_text("x")
    with pytest.raises(ArchiveError):
        archive.clear_archive(root, f)
    assert f.read_text() == "x"


@pytest.mark.parametrize("bad", ["", "   ", None, 5, "a\x00b"])
def test_bad_paths_are_clear_errors(root, bad):
    with pytest.raises(ArchiveError):
        archive.clear_archive(root, bad)
    with pytest.raises(ArchiveError):
        archive.ensure_archive(bad if bad is not None else "", "x")

