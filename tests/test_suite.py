"""The suite's own machinery: the README's test command runs it under pytest-xdist with `--dist loadgroup`, and
tests that share one expensive fixture (gpu.sh's dry run, the baselines' official runs) rely on their
`xdist_group` keeping them on one worker."""

import re
import subprocess
import sys

GROUPED = '''
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    pass
'''

UNGROUPED = '''
import time
import pytest


@pytest.mark.parametrize("i", range(4))
def test_free(i):
    time.sleep(0.2)
'''


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_free.py").write_text(UNGROUPED)
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
                             "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    grouped = re.findall(r"\[(gw\d+)\].*PASSED .*test_grouped\.py::(test_grouped\[\d\]\S*)", result.stdout)
    assert len(grouped) == 4, result.stdout
    # pytest 9.2 with pytest-xdist 3.8 drops the group (no "@shared" suffix) and spreads the tests over workers
    assert all(name.endswith("@shared") for _, name in grouped), grouped
    assert len({worker for worker, _ in grouped}) == 1, grouped
