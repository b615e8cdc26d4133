"""Split FER2013's training faces into two disjoint halves by a stable hash of each file's class and name, and
lay each half out as a class-folder dataset of links: OUT/halfA/{train,test}/<class>/..., OUT/halfB/... .

Both halves share FER2013's validation faces as their test split. The hash (SHA-256 of "class/name") does not
depend on the listing order, the machine or the Python version, so every sitting makes the same halves.

    python make_halves.py ../shared/data/fer2013 /tmp/fer2013-halves
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def half_of(class_name: str, file_name: str) -> str:
    digest = hashlib.sha256(f"{class_name}/{file_name}".encode()).digest()
    return "halfA" if digest[0] % 2 == 0 else "halfB"


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_symlink():
        target.symlink_to(source.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fer2013", type=Path, help="FER2013 folder with train/ and val/ class folders")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    counts: dict[str, int] = {"halfA": 0, "halfB": 0}
    for class_dir in sorted((args.fer2013 / "train").iterdir()):
        for image in sorted(class_dir.iterdir()):
            half = half_of(class_dir.name, image.name)
            link(image, args.out / half / "train" / class_dir.name / image.name)
            counts[half] += 1
    for half in counts:
        for class_dir in sorted((args.fer2013 / "val").iterdir()):
            for image in sorted(class_dir.iterdir()):
                link(image, args.out / half / "test" / class_dir.name / image.name)
    print(json.dumps({"train_faces": counts, "out": str(args.out)}))


if __name__ == "__main__":
    main()
