"""The type hints stay true: mypy (pinned in the test extras) checks the package and its kernels by mypy.ini."""

import pytest

from conftest import REPO


@pytest.mark.slow(seconds=20)
def test_mypy_finds_no_error(tmp_path):
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(REPO / "mypy.ini"), "--cache-dir", str(tmp_path),
                                      str(REPO / "smec_fast"), str(REPO / "kernels")])
    assert status == 0, stdout + stderr
    assert "Success: no issues found" in stdout
