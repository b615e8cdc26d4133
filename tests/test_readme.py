"""The README's Python snippets run as they are written, in order, in an empty folder: the README cannot drift
from the code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys

import pytest

from conftest import REPO
from smec_fast.faces import DETECTOR_INSTALL, detector_available

sys.path.insert(0, str(REPO / "bench"))
from faces_compose import compose  # noqa: E402  (bench/faces_compose.py: photos composed from real faces)


def python_snippets() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_the_readme_has_its_three_python_snippets():
    snippets = python_snippets()
    assert len(snippets) == 3
    assert "smec_fast.train(" in snippets[0] and "predict(" in snippets[1] and "read_sweep(" in snippets[2]
    assert all(len(s.strip().splitlines()) <= 6 for s in snippets)  # five lines each, and the import


@pytest.mark.slow(seconds=60)
@pytest.mark.skipif(not detector_available(), reason=f"the predict snippet finds faces: {DETECTOR_INSTALL}")
def test_the_readme_python_snippets_run(tmp_path, shared, monkeypatch):
    from PIL import Image

    crops = [Image.open(p) for p in sorted((shared / "data" / "fer2013" / "val" / "happy").glob("*"))[:3]]
    (tmp_path / "photos").mkdir()
    group, _ = compose(crops[:2], [(130, 180, 150, 0), (350, 170, 150, 5)], seed=2)
    group.save(tmp_path / "photos" / "group.jpg")
    portrait, _ = compose(crops[2:], [(180, 240, 170, 0)], size=(360, 480), seed=3)
    sideways = Image.Exif()
    sideways[0x0112] = 6  # stored sideways, as phones store portrait photos
    portrait.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "photos" / "phone.jpg", exif=sideways.tobytes())
    monkeypatch.chdir(tmp_path)
    printed = []
    for snippet in python_snippets():
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})
        printed.append(output.getvalue())
    assert "final accuracy" in printed[0] and (tmp_path / "runs" / "quick" / "metrics.json").is_file()
    faces = printed[1].splitlines()
    assert sum(line.startswith("photos/group.jpg") for line in faces) == 2, printed[1]
    assert sum(line.startswith("photos/phone.jpg") for line in faces) == 1, printed[1]
    rows = [row for row in printed[2].splitlines() if not row.startswith("epoch ")]  # the runs report epochs too
    assert [row.split()[0] for row in rows] == ["ce", "smec"] and all(" 0.4 0 " in row for row in rows), rows
    assert os.path.isfile("runs/sweep/table.md")
