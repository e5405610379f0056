"""Archive directories: created and cleared only strictly below the archive root."""
from __future__ import annotations

import pytest

from reactor.engine import archive
from reactor.domain.errors import ArchiveError


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



# --- a job's archive must be its own ---------------------------------------------------------

def test_check_path_is_the_real_normalised_location(root, tmp_path):
    assert archive.check_path(root, root / "a" / "." / "b" / ".." / "c") == str(root / "a" / "c")
    assert archive.check_path(root, "rel//x/") == str(root / "rel" / "x")
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert archive.check_path(alias, alias / "job") == str(root / "job")


@pytest.mark.parametrize("bad, words", [
    ("a\x00b", "NUL"),
    ("a\udcffb", "UTF-8"),
    (5, "got 5"),
    (b"/bytes", "bytes"),
    ("", "non-empty"),
])
def test_check_path_refuses_unusable_text(root, bad, words):
    with pytest.raises(ArchiveError) as info:
        archive.check_path(root, bad)
    assert words in str(info.value)


def test_a_non_string_value_is_never_echoed(root):
    secret = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ArchiveError) as info:
        archive.check_path(root, [secret])
    assert secret not in str(info.value) and "an array of 1 items" in str(info.value)


def test_spellings_cover_the_forms_records_may_hold(root, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    forms = archive.spellings(alias, str(alias) + "/p//j/")
    assert forms[0] == str(root / "p" / "j")
    assert set(forms) >= {str(root / "p" / "j"), str(alias / "p" / "j"), "p/j"}
    assert len(forms) == len(set(forms))


def _record(n, path):
    from reactor.domain import records
    from reactor.domain.identifiers import pipeline_uuid, typed_uuid

    return records.new_job_record(uuid=typed_uuid("pipelinejob", f"archive test {n}"),
                                  pipeline_uuid=pipeline_uuid("archive-tests"), data={"n": n},
                                  date=records.now_iso(), archive_path=str(path))


def test_check_own_and_claim_on_the_store(store, root, outside):
    job = _record(1, root / "products" / "v2" / "p" / "j")
    store.create_job(job)
    parent = root / "products" / "v2"
    for path, relation in ((parent, "contains"), (root / "products" / "v2" / "p" / "j", "is"),
                           (root / "products" / "v2" / "p" / "j" / "in", "lies inside")):
        with pytest.raises(ArchiveError) as info:
            archive.check_own(store, root, path, "107-someone-else", "use it")
        assert f"{relation} the archive of job {job['uuid']}" in str(info.value)
        with pytest.raises(ArchiveError):
            archive.claim(store, root, str(path), _record(2, path)["uuid"])
    # The job's own path is its own; a sibling is nobody's.
    assert archive.check_own(store, root, job["archive_path"], job["uuid"], "x") == \
        root / "products" / "v2" / "p" / "j"
    assert archive.claim(store, root, str(root / "products" / "v2" / "p" / "k"), "107-k") == \
        str(root / "products" / "v2" / "p" / "k")
    # Reset's question: only what the directory holds counts.
    assert archive.check_own(store, root, job["archive_path"] + "/in", "107-x", "clear it",
                             enclosing=False) == root / "products" / "v2" / "p" / "j" / "in"
    with pytest.raises(ArchiveError):
        archive.check_own(store, root, parent, "107-x", "clear it", enclosing=False)
    # "" is no archive; no root known refuses any other path.
    assert archive.claim(store, root, "", "107-e") == ""
    assert archive.claim(store, None, "", "107-e") == ""
    with pytest.raises(ArchiveError, match="archive root"):
        archive.claim(store, None, str(root / "x"), "107-e")
    with pytest.raises(ArchiveError, match="outside the archive root"):
        archive.claim(store, root, str(outside), "107-e")


def test_other_jobs_paths_outside_the_root_are_not_owners(store, root, outside):
    # A record claiming the root itself, or somewhere outside it, can never be cleared by a
    # reset: it must not block every job below the root.
    store.create_job(_record(3, root))
    store.create_job(_record(4, "/"))
    store.create_job(_record(5, outside))
    assert archive.claim(store, root, "products/v2/p/j", "107-new") == \
        str(root / "products" / "v2" / "p" / "j")


def test_an_existing_job_keeps_its_record_on_claim(store, root):
    mine = _record(6, root / "mine")
    other = _record(7, root / "mine-other")
    store.create_job(mine)
    store.create_job(other)
    # The job exists, so create writes nothing: asking for an overlapping path is not refused.
    assert archive.claim(store, root, str(root / "mine-other" / "x"), mine["uuid"]) == \
        str(root / "mine-other" / "x")
