"""The source revision a run records: HEAD of the package's own checkout, "+dirty" only for source edits."""

import shutil
import subprocess

import pytest

from smec_fast.provenance import SOURCE_ROOT, git_revision, source_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "smec_fast").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "smec_fast" / "core.py").write_text("x = 1\n")
    (root / "docs" / "notes.md").write_text("notes\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return root


def test_clean_checkout_gives_head(checkout):
    assert git_revision(checkout, ("smec_fast",)) == _git(checkout, "rev-parse", "HEAD")


def test_source_edit_is_dirty_other_edits_are_not(checkout):
    head = _git(checkout, "rev-parse", "HEAD")
    (checkout / "docs" / "notes.md").write_text("changed\n")
    (checkout / "smec_fast" / "untracked.py").write_text("y = 2\n")
    assert git_revision(checkout, ("smec_fast",)) == head
    (checkout / "smec_fast" / "core.py").write_text("x = 2\n")
    assert git_revision(checkout, ("smec_fast",)) == head + "+dirty"


def test_not_the_top_of_a_checkout_gives_none(checkout, tmp_path):
    # an installed copy inside some other repository (a virtual environment in a checkout) has no commit
    assert git_revision(checkout / "smec_fast", ("smec_fast",)) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_revision(plain, ("smec_fast",)) is None


@pytest.mark.skipif(not (SOURCE_ROOT / ".git").exists(), reason="the package is not running from a checkout")
def test_running_package_reports_its_checkout():
    assert source_revision().removesuffix("+dirty") == _git(SOURCE_ROOT, "rev-parse", "HEAD")
