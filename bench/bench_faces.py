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

`--detectors mtcnn,mediapipe` also measures, on the same photos, the other candidate that ships its weights inside
its wheel: MediaPipe's face mesh (legacy `solutions` API, mediapipe 0.10.21, the last release that bundles the
models; newer releases download them at run time). It needs numpy < 2, so it runs in an environment of its own:
`pip install mediapipe==0.10.21` into a copy of the project's venv. Its five points are taken from the mesh (eye
centres as the mean of each eye's corners and lids, nose tip, mouth corners), its box is the mesh's bounding box,
and it gives no per-face score. The recall of MediaPipe's full-range face detector (BlazeFace: boxes and six
keypoints, no mouth corners) on the same photos is reported beside it.

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

from smec_fast.faces import Face, FaceDetector
from smec_fast.atomic import atomic_write_json

# MediaPipe face-mesh indices of the five points (image left first): each eye's two corners and two lids, the
# nose tip, the mouth corners
MESH_EYES = ((33, 133, 159, 145), (362, 263, 386, 374))
MESH_NOSE, MESH_MOUTH = 1, (61, 291)


class MediaPipeFaces:
    """MediaPipe's face mesh as a detector with smec_fast.faces.FaceDetector's `detect`."""

    def __init__(self, max_faces: int = 6):
        import mediapipe as mp

        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                                    min_detection_confidence=0.5)
        self.blazeface = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)

    def detect(self, photo: Image.Image) -> list[Face]:
        found = self.mesh.process(np.asarray(photo.convert("RGB"))).multi_face_landmarks or []
        faces = []
        for mesh in found:
            points = np.array([[p.x * photo.width, p.y * photo.height] for p in mesh.landmark])  # (468, 2)
            five = np.stack([points[list(MESH_EYES[0])].mean(0), points[list(MESH_EYES[1])].mean(0),
                             points[MESH_NOSE], points[MESH_MOUTH[0]], points[MESH_MOUTH[1]]])
            box = (*points.min(0), *points.max(0))
            faces.append(Face(tuple(float(v) for v in box), torch.from_numpy(five), 1.0))
        return faces

    def boxes(self, photo: Image.Image) -> list[tuple[float, float, float, float]]:
        """The full-range face detector's boxes."""
        found = self.blazeface.process(np.asarray(photo.convert("RGB"))).detections or []
        out = []
        for d in found:
            b = d.location_data.relative_bounding_box
            out.append((b.xmin * photo.width, b.ymin * photo.height, (b.xmin + b.width) * photo.width,
                        (b.ymin + b.height) * photo.height))
        return out


def match(boxes, places) -> tuple[dict[int, int], int]:
    """Detections to placed faces: a box matches the first unmatched face whose centre lies within a third of its
    side of the box's centre. Returns {box index: face index in `places`} and the count of unmatched boxes."""
    used, hits, false = set(), {}, 0
    for i, box in enumerate(boxes):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        hit = next((k for k, (px, py, side, _) in enumerate(places)
                    if k not in used and abs(cx - px) < side / 3 and abs(cy - py) < side / 3), None)
        if hit is None:
            false += 1
        else:
            used.add(hit)
            hits[i] = hit
    return hits, false


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


def reference_landmarks(detector, crops: list[Image.Image]) -> list[np.ndarray | None]:
    """Each crop's five landmarks (crop pixels) as `detector` finds them on the crop placed upright at 192 px."""
    reference = []
    for i, crop in enumerate(crops):
        photo, (crop_map,) = compose([crop], [(320, 240, 192, 0)], size=(640, 480), seed=10_000 + i)
        found = detector.detect(photo)
        reference.append(to_crop(found[0].landmarks, crop_map) if found else None)
    return reference


def landmark_errors(found: dict[int, tuple[Face, np.ndarray]], reference: list[np.ndarray | None]) -> dict:
    """Mean distance of the five landmarks (mapped back into the crop) from the reference's, as a fraction of the
    reference's inter-ocular distance, over the found faces that have a reference."""
    errors = [float(np.linalg.norm(to_crop(face.landmarks, crop_map) - reference[i], axis=1).mean()
                    / np.linalg.norm(reference[i][0] - reference[i][1]))
              for i, (face, crop_map) in found.items() if reference[i] is not None]
    if not errors:
        return {"faces": 0}
    return {"faces": len(errors), "mean": float(np.mean(errors)), "median": float(np.median(errors)),
            "p90": float(np.quantile(errors, 0.9)), "max": float(np.max(errors))}


def measure(detector, crops: list[Image.Image], scenes: list) -> tuple[dict, dict]:
    """Recall, false detections, recall by face side, landmark error against the detector's own reference and
    detection speed on `scenes`; returns them and the found faces {face index: (Face, crop map)}."""
    reference = reference_landmarks(detector, crops)
    found: dict[int, tuple[Face, np.ndarray]] = {}
    false_detections, seconds, sides = 0, 0.0, {}
    for photo, indices, places, maps in scenes:
        t0 = time.perf_counter()
        faces = detector.detect(photo)
        seconds += time.perf_counter() - t0
        hits, false = match([face.box for face in faces], places)
        false_detections += false
        for i, hit in hits.items():
            found[indices[hit]] = (faces[i], maps[hit])
        for k, (_, _, side, _) in enumerate(places):
            bucket = f"{40 * (side // 40)}-{40 * (side // 40) + 39}px"
            placed, seen = sides.get(bucket, (0, 0))
            sides[bucket] = (placed + 1, seen + (k in hits.values()))
    return {
        "recall": len(found) / len(crops), "false_detections": false_detections,
        "recall_by_side": {b: {"faces": placed, "recall": seen / placed}
                           for b, (placed, seen) in sorted(sides.items())},
        "reference_found": sum(r is not None for r in reference),
        "landmark_error": landmark_errors(found, reference),
        "detect_photos_per_s": len(scenes) / seconds,
    }, {"found": found, "reference": reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fer2013" / "val"),
                        help="class folders of face crops (default: the shared FER2013 validation faces)")
    parser.add_argument("--faces", type=int, default=300, help="faces to place (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default="mtcnn",
                        help="comma-separated, measured on the same photos: mtcnn (smec_fast.faces, the one "
                             "`predict --detect` uses; its figures are the top-level ones) and mediapipe")
    parser.add_argument("--checkpoint", help="a smec-fast checkpoint to classify the faces with")
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    names = args.detectors.split(",")
    if names[0] != "mtcnn" or not set(names) <= {"mtcnn", "mediapipe"}:
        parser.error(f"--detectors: mtcnn first, then optionally mediapipe; got {args.detectors}")

    faces = sample_faces(Path(args.data), args.faces, args.seed)
    crops = [Image.open(path).convert("RGB") for path, _ in faces]
    rng = np.random.default_rng(args.seed)
    scenes, start = [], 0
    while start < len(crops):
        count = int(min(rng.integers(1, 4), len(crops) - start))
        places = random_scene(rng, count)
        photo, maps = compose(crops[start:start + count], places, size=(640, 480), seed=start)
        scenes.append((photo, list(range(start, start + count)), places, maps))
        start += count

    detector = FaceDetector()
    figures, mtcnn = measure(detector, crops, scenes)
    result = {
        "what": "faces composed into photos from FER2013 validation crops (bench/faces_compose.py)",
        "detector": "mtcnn",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "git": git_sha(), "cpu": cpu_features(), "threads": torch.get_num_threads(), "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "faces": len(crops), "photos": len(scenes), "photo_size": [640, 480], "face_sides": [80, 200],
        "angles_deg": [-30, 30], **figures,
    }
    if "mediapipe" in names:
        import mediapipe

        other = MediaPipeFaces()
        candidate, mp_found = measure(other, crops, scenes)
        # its landmarks against MTCNN's upright reference too: the two detectors place points differently
        # (MediaPipe's eye centre is the mean of four eye-contour points), so this error includes that bias
        candidate["landmark_error_vs_mtcnn_reference"] = landmark_errors(mp_found["found"], mtcnn["reference"])
        found = sum(len(match(other.boxes(photo), places)[0]) for photo, _, places, _ in scenes)
        candidate["recall_blazeface_full_range"] = found / len(crops)
        candidate["speed_ratio_vs_mtcnn"] = candidate["detect_photos_per_s"] / figures["detect_photos_per_s"]
        result["versions"]["mediapipe"] = mediapipe.__version__
        result["candidates"] = {"mediapipe_face_mesh": candidate}

    if args.checkpoint:
        from smec_fast.data.images import decode_image_file, normalize
        from smec_fast.inference import load_trained_model
        from smec_fast.media import predict_photo_faces

        trained = load_trained_model(args.checkpoint)
        class_names = [n.lower() for n in trained.class_names]
        unknown = sorted({c for _, c in faces if c.lower() not in class_names})
        if unknown:
            raise SystemExit(f"{args.checkpoint}: classes {', '.join(trained.class_names)} do not include "
                             f"{', '.join(unknown)} of {args.data}")
        labels = torch.tensor([class_names.index(c.lower()) for _, c in faces])
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
            hits, _ = match([face.box for face in photo.faces], places)
            for i, hit in hits.items():
                detected_pred[indices[hit]] = int(photo.probabilities[i].argmax())
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
