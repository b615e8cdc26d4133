"""Faces in photos, measured: detection recall and false detections, landmark error, photos per second, and a
checkpoint's accuracy through `predict --detect` against the same faces given as crops.

Photos are composed from FER2013's validation faces (bench/faces_compose.py): 640 x 480 clutter with 1 to 3
faces each, every face upscaled to 80-200 px and rotated by up to 30 degrees, at a known place. A detection
matches a face when its box centre lies within a third of the face's side of the true centre. Landmark error:
each matched face's five landmarks, mapped back into its crop, against the landmarks the detector finds on the
same crop placed upright at 192 px (the reference), as a fraction of the reference's inter-ocular distance.
Speed: photos per second of detection alone, and of detection, alignment and classification together
(`predict_photo_faces`), on this machine's CPU with torch's threads.

    python bench/bench_faces.py --checkpoint /tmp/fer2013-pretrained/backbone-run/checkpoint.pt \
        --out bench/results/faces_cpu.json

With --checkpoint, every face is also classified from its crop as the training loaders prepare a crop (resized
to the model's input, no alignment) and through detection and alignment; both accuracies against the faces'
labels are reported over the faces detected, with how often the two predictions agree. A benchmark reports;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchenv import REPO, cpu_features, git_sha, versions
from faces_compose import compose, random_scene, to_crop

from smec_fast.faces import FaceDetector
from smec_fast.io import atomic_write_json


def sample_faces(root: Path, count: int, seed: int) -> list[tuple[Path, str]]:
    """`count` validation faces, as even across the class folders as they allow, in a seeded order."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    per_class = {c: sorted((root / c).glob("*")) for c in classes}
    chosen = []
    for c in classes:
        files = per_class[c]
        take = min(len(files), -(-count // len(classes)))
        chosen += [(files[i], c) for i in rng.choice(len(files), size=take, replace=False)]
    order = rng.permutation(len(chosen))[:count]
    return [chosen[i] for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fer2013" / "val"),
                        help="class folders of face crops (default: the shared FER2013 validation faces)")
    parser.add_argument("--faces", type=int, default=300, help="faces to place (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="a smec-fast checkpoint to classify the faces with")
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)

    faces = sample_faces(Path(args.data), args.faces, args.seed)
    crops = [Image.open(path).convert("RGB") for path, _ in faces]
    detector = FaceDetector()
    rng = np.random.default_rng(args.seed)

    reference = []
    for i, crop in enumerate(crops):
        photo, (crop_map,) = compose([crop], [(320, 240, 192, 0)], size=(640, 480), seed=10_000 + i)
        found = detector.detect(photo)
        reference.append(to_crop(found[0].landmarks, crop_map) if found else None)

    scenes, start = [], 0
    while start < len(crops):
        count = int(min(rng.integers(1, 4), len(crops) - start))
        places = random_scene(rng, count)
        photo, maps = compose(crops[start:start + count], places, size=(640, 480), seed=start)
        scenes.append((photo, list(range(start, start + count)), places, maps))
        start += count

    detections, seconds = [], 0.0
    for photo, *_ in scenes:
        t0 = time.perf_counter()
        detections.append(detector.detect(photo))
        seconds += time.perf_counter() - t0
    matched: dict[int, object] = {}
    false_detections, errors = 0, []
    for (photo, indices, places, maps), found in zip(scenes, detections):
        used = set()
        for face in found:
            cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            hit = next((k for k, (px, py, side, _) in enumerate(places)
                        if k not in used and abs(cx - px) < side / 3 and abs(cy - py) < side / 3), None)
            if hit is None:
                false_detections += 1
                continue
            used.add(hit)
            index = indices[hit]
            matched[index] = face
            if reference[index] is not None:
                ref = reference[index]
                eyes = np.linalg.norm(ref[0] - ref[1])
                errors.append(float(np.linalg.norm(to_crop(face.landmarks, maps[hit]) - ref, axis=1).mean() / eyes))
    result = {
        "what": "faces composed into photos from FER2013 validation crops (bench/faces_compose.py)",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "git": git_sha(), "cpu": cpu_features(), "threads": torch.get_num_threads(), "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "faces": len(crops), "photos": len(scenes), "photo_size": [640, 480], "face_sides": [80, 200],
        "angles_deg": [-30, 30],
        "recall": len(matched) / len(crops), "false_detections": false_detections,
        "reference_found": sum(r is not None for r in reference),
        "landmark_error": {"faces": len(errors), "mean": float(np.mean(errors)), "median": float(np.median(errors)),
                           "p90": float(np.quantile(errors, 0.9)), "max": float(np.max(errors))},
        "detect_photos_per_s": len(scenes) / seconds,
    }

    if args.checkpoint:
        from smec_fast.data.images import decode_image_file, normalize
        from smec_fast.inference import load_trained_model, predict_photo_faces

        trained = load_trained_model(args.checkpoint)
        names = [n.lower() for n in trained.class_names]
        unknown = sorted({c for _, c in faces if c.lower() not in names})
        if unknown:
            raise SystemExit(f"{args.checkpoint}: classes {', '.join(trained.class_names)} do not include "
                             f"{', '.join(unknown)} of {args.data}")
        labels = torch.tensor([names.index(c.lower()) for _, c in faces])
        with torch.no_grad():
            crop_pred = torch.cat([trained.model(normalize(torch.stack(
                [decode_image_file(path, trained.image_size) for path, _ in faces[i:i + 64]])))[0].argmax(1)
                for i in range(0, len(faces), 64)])
        folder = Path(args.out).parent / ".faces-photos" if args.out else Path("/tmp/bench-faces-photos")
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, (photo, *_) in enumerate(scenes):
            files.append(folder / f"{k:04d}.png")
            photo.save(files[-1])
        t0 = time.perf_counter()
        done = predict_photo_faces(trained, files, detector, batch_size=32)
        pipeline_s = time.perf_counter() - t0
        detected_pred = {}
        for (_, indices, places, _), photo in zip(scenes, done):
            for face, probs in zip(photo.faces, photo.probabilities):
                cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
                hit = next((k for k, (px, py, side, _) in enumerate(places)
                            if abs(cx - px) < side / 3 and abs(cy - py) < side / 3), None)
                if hit is not None:
                    detected_pred.setdefault(indices[hit], int(probs.argmax()))
        both = sorted(detected_pred)
        via_detect = torch.tensor([detected_pred[i] for i in both])
        result["classification"] = {
            "checkpoint": args.checkpoint, "image_size": trained.image_size, "faces": len(both),
            "crop_accuracy": float((crop_pred[both] == labels[both]).float().mean() * 100),
            "detect_accuracy": float((via_detect == labels[both]).float().mean() * 100),
            "agreement": float((via_detect == crop_pred[both]).float().mean() * 100),
            "crop_accuracy_all_faces": float((crop_pred == labels).float().mean() * 100),
            "pipeline_photos_per_s": len(files) / pipeline_s,
        }
        for file in files:
            file.unlink()
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions",)}, indent=1))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
