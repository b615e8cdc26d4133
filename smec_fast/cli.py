"""Command line: `smec-fast train | evaluate | predict | audit | export | backbone | sweep | align | cam | noise |
synth-rafdb`.

Every TrainConfig field is an option of `train` (`--batch-size 32` or `--batch_size 32`); a YAML/JSON file
given with `--config` sets values that the command line overrides. Any error prints one line naming what is
wrong and exits non-zero (2 for bad input, 1 for anything unexpected); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from smec_fast.config import FIELDS, load_config_file, option_values, resolve_config, unknown_key_message
from smec_fast.grid import SPLITS, grid_text
from smec_fast.errors import ConfigError, DataError, SmecFastError, first_line

PROG = "smec-fast"
log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become ConfigError, printed as one line like every other error."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def _add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    for name, f in FIELDS.items():
        if name in exclude:
            continue
        flags = [f"--{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{name}")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        default = grid_text(f.default) if name == "grid" else ("none" if f.default is None else f.default)
        extra = {"nargs": "?", "const": "true"} if "bool" in kind else {}
        parser.add_argument(*flags, dest=f"cfg_{name}", default=argparse.SUPPRESS, metavar="VALUE",
                            help=f"(default {default})", **extra)
    parser.add_argument("--split", dest="cfg_split", default=argparse.SUPPRESS, metavar="VALUE",
                        help=f"{' or '.join(SPLITS)}: another spelling of --grid "
                             f"({', '.join(f'{k} = {grid_text(v)}' for k, v in SPLITS.items())})")


def _add_split_options(parser: argparse.ArgumentParser, split: str, out_prefix: str) -> None:
    """Options of the commands that score a checkpoint on a dataset split (evaluate, audit)."""
    parser.add_argument("--dataset", choices=("synthetic", "rafdb", "folder"),
                        help="dataset (default: the one the checkpoint was trained on)")
    parser.add_argument("--data", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--split", choices=("test", "train"), default=split, help=f"(default {split})")
    parser.add_argument("--out", help=f"output folder (default: {out_prefix}-DATASET-SPLIT beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                        help="autocast dtype (default auto: as the run evaluated itself, i.e. bf16 on CUDA and on "
                             "CPUs with native bf16 unless the run was trained with --amp off)")


CHECKPOINT_HELP = "checkpoint.pt (last epoch) or selected.pt (best validation epoch) of a `smec-fast train` run"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="SMEC trainer for noisy-label facial expression recognition",
                     allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (default: SMEC on the embedded synthetic faces)",
                           allow_abbrev=False, description="Train SMEC or a baseline. Every option below sets "
                           "the config field of the same name; see smec_fast/config.py for what each means.")
    train.add_argument("--config", help="YAML or JSON file of options (the command line overrides it)")
    _common(train)
    _add_config_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", allow_abbrev=False, help="score a checkpoint on a dataset split")
    evaluate.add_argument("checkpoint", help=CHECKPOINT_HELP)
    _add_split_options(evaluate, "test", "eval")
    _common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", allow_abbrev=False, help="classify images, optionally with CAM overlays")
    predict.add_argument("checkpoint", help=CHECKPOINT_HELP)
    predict.add_argument("images", help="an image file, or a folder searched recursively for images; with "
                                        "--detect also a video file, or a folder's videos")
    predict.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    predict.add_argument("--cam", metavar="DIR", help="also write one PNG per image: the predicted class's CAM")
    predict.add_argument("--skip-bad-images", action="store_true",
                         help="skip unreadable images with a warning instead of stopping")
    predict.add_argument("--detect", action="store_true",
                         help="find the faces in each photo (MTCNN, five landmarks), align each as the training "
                              "faces are aligned and classify it: one CSV row per face, and one per photo "
                              "without a face")
    predict.add_argument("--jsonl", metavar="FILE", help="with --detect: also write the rows as JSON lines")
    predict.add_argument("--annotate", metavar="DIR", help="with --detect: a copy of each photo with boxes, "
                                                           "landmarks, class and probability drawn on it")
    predict.add_argument("--annotate-cam", action="store_true",
                         help="with --annotate: also paint each face's CAM of its predicted class where the face "
                              "lies (the aligned frame the network saw, warped back into the photo)")
    predict.add_argument("--min-face", type=int, default=20, help="with --detect: smallest face side in pixels")
    predict.add_argument("--fps", type=float, help="with --detect, for videos: frames per second to classify "
                                                   "(default: every frame)")
    predict.add_argument("--min-score", type=float, default=0.9,
                         help="with --detect: smallest detector confidence kept (default 0.9)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", default="auto")
    _common(predict)
    predict.set_defaults(func=cmd_predict)

    audit = sub.add_parser("audit", allow_abbrev=False, help="rank a dataset's labels by how likely a model finds "
                           "them wrong", description="Score every image of a split with a trained model and write "
                           "label_audit.csv (most suspect label first) and label_audit.png (a contact sheet of the "
                           "most suspect images). With --labels, audit the labels of that file (e.g. a run's "
                           "train_labels.txt) against the dataset's own, and report how well the ranking finds the "
                           "ones that differ.")
    audit.add_argument("checkpoint", help=CHECKPOINT_HELP)
    _add_split_options(audit, "train", "audit")
    audit.add_argument("--labels", help="EAC-format label file to audit instead of the dataset's own labels")
    audit.add_argument("--sheet", type=int, default=24, help="images on the contact sheet (default 24; 0: none)")
    _common(audit)
    audit.set_defaults(func=cmd_audit)

    backbone = sub.add_parser("backbone", allow_abbrev=False, help="write a run's network as weights to start "
                              "other runs from", description="Write a trained run's weights (and its class names) "
                              "to FILE, for --pretrained FILE, with a card FILE.json saying where they come from.")
    backbone.add_argument("checkpoint", help=CHECKPOINT_HELP)
    backbone.add_argument("--out", required=True, help="weight file to write, e.g. fer2013-halfA.pt")
    backbone.add_argument("--head", choices=("keep", "drop"), default="keep",
                          help="keep the classifier in the file (default; --pretrained-head decides at load time) "
                               "or leave it out")
    _common(backbone)
    backbone.set_defaults(func=cmd_backbone)

    export = sub.add_parser("export", allow_abbrev=False, help="export a checkpoint's model")
    export.add_argument("checkpoint", help=CHECKPOINT_HELP)
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("--out", help="file to write (default: the checkpoint's name with .ts or .onnx)")
    _common(export)
    export.set_defaults(func=cmd_export)

    sweep = sub.add_parser("sweep", allow_abbrev=False, help="train a grid of methods x noise rates x seeds",
                           description="Train every cell of a grid (skipping finished cells, resuming interrupted "
                           "ones) and write sweep.json, table.md and balanced_accuracy.png. Other options are "
                           "passed to every run.")
    sweep.add_argument("--methods", required=True,
                       help="comma-separated variants: METHOD[:key=value...][:label=NAME], e.g. "
                            "ce,elr,eac,smec,smec:grid=2x2:label=split4")
    sweep.add_argument("--noise-rates", required=True, help="comma-separated rates, e.g. 0,0.2,0.4,0.6")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sweep.add_argument("--out", required=True, help="folder of the sweep")
    sweep.add_argument("--config", help="YAML or JSON file of options for every run")
    _common(sweep)
    _add_config_options(sweep, exclude=("method", "noise_rate", "seed", "out", "resume"))
    sweep.set_defaults(func=cmd_sweep)

    align = sub.add_parser("align", allow_abbrev=False, help="detect and align the faces of a tree of photos",
                           description="Find the face in every photo under SRC (MTCNN, five landmarks), align it as "
                           "the training faces are aligned and write it to the same place under DST as a PNG, so "
                           "that `train --dataset folder --data DST` trains on a class-folder tree of raw photos. "
                           "A photo with several faces keeps the most confident; photos without a face or that "
                           "cannot be read are listed in DST/align.json and DST/align.csv. Resumable: the same "
                           "command finishes an interrupted run.")
    align.add_argument("src", help="folder of photos (e.g. train/<class>/*.jpg and test/<class>/*.jpg)")
    align.add_argument("dst", help="folder to write the aligned faces to (outside SRC)")
    align.add_argument("--size", type=int, default=100, help="side of the aligned faces (default 100, RAF-DB's)")
    align.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes (default: one per core)")
    align.add_argument("--min-face", type=int, default=20, help="smallest face side in pixels (default 20)")
    align.add_argument("--min-score", type=float, default=0.9, help="smallest detector confidence (default 0.9)")
    align.add_argument("--progress", choices=("true", "false"), default="true")
    _common(align)
    align.set_defaults(func=cmd_align)

    figure = sub.add_parser("cam", allow_abbrev=False, help="CAM overlays of several models side by side (Fig. 4)")
    figure.add_argument("checkpoints", nargs="+", help="checkpoints to compare, e.g. a CE run and a SMEC run")
    figure.add_argument("--images", help="image file or folder (default: test images of the first checkpoint's "
                                         "dataset, one per class, CAM of the true class)")
    figure.add_argument("--num", type=int, default=7, help="number of images (default 7)")
    figure.add_argument("--labels", help="comma-separated column titles (default: each checkpoint's method)")
    figure.add_argument("--out", default="cams.png", help="PNG to write (default cams.png)")
    figure.add_argument("--seed", type=int, default=0, help="choice of dataset images")
    figure.add_argument("--device", default="auto")
    _common(figure)
    figure.set_defaults(func=cmd_cam)

    synth = sub.add_parser("synth-rafdb", allow_abbrev=False,
                           help="write the embedded synthetic faces as a RAF-DB tree of JPEGs",
                           description="Draw synthetic faces and write them in RAF-DB's layout "
                           "(basic/EmoLabel/list_patition_label.txt, basic/Image/aligned/*_aligned.jpg), so that "
                           "--dataset rafdb runs on them: for benchmarks and tests without RAF-DB's images.")
    synth.add_argument("out", help="folder to write (it must not hold a RAF-DB tree already)")
    synth.add_argument("--train", type=int, default=12271, help="training faces (default 12271, RAF-DB's)")
    synth.add_argument("--test", type=int, default=3068, help="test faces (default 3068, RAF-DB's)")
    synth.add_argument("--size", type=int, default=100, help="image side in pixels (default 100, RAF-DB's aligned)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, help="processes (default: one per core)")
    synth.add_argument("--report", help="also write what was written (counts, size, seconds) to this JSON file")
    _common(synth)
    synth.set_defaults(func=cmd_synth_rafdb)

    noise = sub.add_parser("noise", allow_abbrev=False, help="write an EAC-format label file with symmetric noise")
    noise.add_argument("--labels", required=True, help="clean label file (name label lines, 1-based labels)")
    noise.add_argument("--rate", required=True, type=float, help="noise rate in [0, 1)")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--prefix", default="train_",
                       help="only lines whose name starts with this are noised and written (default train_)")
    noise.add_argument("--num-classes", type=int, default=7)
    noise.add_argument("--out", required=True, help="file to write")
    _common(noise)
    noise.set_defaults(func=cmd_noise)
    return parser


def config_from_args(args: argparse.Namespace):
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    cli_values = option_values({key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_")},
                               "command line")
    return resolve_config(file_values, cli_values)


def _positive(value: int, option: str) -> None:
    if value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from smec_fast.trainer import train

    cfg = config_from_args(args)
    metrics = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 reports
        return 0
    print(f"{cfg.method}: best accuracy {metrics['best_accuracy']:.2f}, final accuracy "
          f"{metrics['final_accuracy']:.2f}, final balanced accuracy {metrics['final_balanced_accuracy']:.2f} "
          f"-> {Path(cfg.out) / 'metrics.json'}")
    return 0


def _checkpoint_on_split(args: argparse.Namespace):
    """evaluate's and audit's common start: the checkpoint's model, the (possibly other) dataset's split, a
    description of it, an evaluation loader over it and the autocast dtype; refuses a split of other classes."""
    import torch

    from smec_fast.data import SplitLoader, load_split
    from smec_fast.inference import check_classes, load_trained_model
    from smec_fast.methods import narrowest_input_width
    from smec_fast.precision import resolve_precision
    from smec_fast.trainer import resolve_device

    _positive(args.batch_size, "--batch-size")
    device = resolve_device(args.device)
    trained = load_trained_model(args.checkpoint, device)
    cfg = _dataset_of(trained, args.dataset, args.data)
    split = load_split(cfg, args.split)
    source = f"{cfg.dataset} {args.split} split" + (f" of {cfg.data}" if cfg.data else "")
    check_classes(trained, split.class_names, source)
    loader = SplitLoader(split, trained.image_size, args.batch_size, device, train=False,
                         num_workers=args.num_workers)
    # The precision and layout the run chose for itself (unless --amp says otherwise), so that the figures
    # match the run's own evaluation exactly on the same machine.
    run = trained.config
    amp = run.amp if args.amp == "auto" and run.amp in ("auto", "off") else args.amp
    precision = resolve_precision(amp, run.channels_last, device, narrowest_input_width(run))
    if precision.channels_last:
        trained.model.to(memory_format=torch.channels_last)
    return trained, cfg, split, source, loader, precision.amp


def cmd_evaluate(args: argparse.Namespace) -> int:
    from smec_fast.atomic import atomic_write_json
    from smec_fast.plots import save_confusion_matrix
    from smec_fast.trainer import evaluate

    trained, cfg, split, source, loader, amp = _checkpoint_on_split(args)
    metrics = evaluate(trained.model, loader, trained.class_names, amp)
    out = Path(args.out) if args.out else trained.path.parent / f"eval-{cfg.dataset}-{args.split}"
    result = {
        "checkpoint": str(trained.path), "epoch": trained.epoch, "method": cfg.method,
        "noise_rate": cfg.noise_rate, "dataset": cfg.dataset, "data": cfg.data, "split": args.split,
        "num_images": len(split), "class_names": list(trained.class_names), **metrics,
    }
    atomic_write_json(out / "evaluation.json", result)
    save_confusion_matrix(metrics["confusion_matrix"], trained.class_names, out / "confusion_matrix.png",
                          title=f"{cfg.method}, {source}: accuracy {metrics['accuracy']:.2f} %")
    print(f"accuracy {metrics['accuracy']:.2f}, balanced accuracy {metrics['balanced_accuracy']:.2f} "
          f"on {len(split)} images -> {out / 'evaluation.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from smec_fast.data.images import list_images
    from smec_fast.inference import cam_overlay, display_image, load_trained_model, predict_files
    from smec_fast.atomic import atomic_write_bytes, atomic_write_text
    from smec_fast.trainer import resolve_device

    _positive(args.batch_size, "--batch-size")
    if args.detect:
        return _predict_detected(args)
    for option in ("jsonl", "annotate", "annotate_cam"):
        if getattr(args, option):
            raise ConfigError(f"--{option.replace('_', '-')} needs --detect")
    trained = load_trained_model(args.checkpoint, resolve_device(args.device))
    if args.cam and not trained.model.has_cam:
        from smec_fast.model import NO_CAM

        raise ConfigError(f"--cam: {args.checkpoint}: {NO_CAM}")
    root = Path(args.images)
    files = list_images(root)
    predictions, skipped = predict_files(trained, files, args.batch_size, skip_bad=args.skip_bad_images)
    if not predictions:
        raise SmecFastError(f"{root}: none of its {len(files)} image files could be read")

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "predicted", *trained.class_names])
    for p in predictions:
        writer.writerow([str(p.path), trained.class_names[p.label], *(f"{v:.6f}" for v in p.probabilities.tolist())])
    atomic_write_text(args.out, buffer.getvalue())

    if args.cam:
        for p in predictions:
            overlay = cam_overlay(display_image(p.path), p.cam).permute(1, 2, 0).numpy()
            relative = p.path.relative_to(root) if root.is_dir() else Path(p.path.name)
            png = io.BytesIO()
            Image.fromarray(overlay).save(png, format="PNG")
            atomic_write_bytes(Path(args.cam) / relative.with_name(relative.name + ".png"), png.getvalue())
    print(f"{len(predictions)} images classified -> {args.out}"
          + (f"; CAM overlays in {args.cam}" if args.cam else "")
          + (f"; {len(skipped)} unreadable images skipped" if skipped else ""))
    return 0


def _detect_inputs(root: Path) -> tuple[list[Path], list[Path]]:
    """(photos, videos) of `root`: one file, or those under a folder (recursively, sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from smec_fast.inference import VIDEO_EXTENSIONS

    if root.is_file():
        return ([], [root]) if root.suffix.lower() in VIDEO_EXTENSIONS else ([root], [])
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    photos = [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not photos and not videos:
        raise DataError(f"{root}: no image or video files in this folder")
    return photos, videos


def _face_rows(photo, names: list[str]) -> list[dict]:
    """The rows of one photo or frame: one per face, or one saying why there is none."""
    from smec_fast.faces import LANDMARK_NAMES

    base = {"file": str(photo.path), "frame": photo.frame, "time_s": None if photo.time is None else round(photo.time, 4)}
    if photo.problem is not None:
        return [{**base, "face": None, "status": photo.problem}]
    if not photo.faces:
        return [{**base, "face": None, "status": "no face found"}]
    return [{**base, "face": i, "status": "ok", "score": round(face.score, 6), "box": [round(v, 2) for v in face.box],
             "landmarks": {n: [round(x, 2), round(y, 2)] for n, (x, y) in zip(LANDMARK_NAMES, face.landmarks.tolist())},
             "predicted": names[int(probs.argmax())],
             "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}}
            for i, (face, probs) in enumerate(zip(photo.faces, photo.probabilities))]


def _predict_detected(args: argparse.Namespace) -> int:
    """`predict --detect`: every face of every photo and of every sampled video frame, one row each; photos and
    frames without a face, and unreadable files, get a row that says so."""
    import json

    from tqdm.auto import tqdm

    from smec_fast.faces import FACE_COLUMNS, LANDMARK_NAMES, FaceDetector, face_cells
    from smec_fast.inference import (
        VideoWriter,
        annotate_photo,
        classify_faces,
        load_trained_model,
        predict_photo_faces,
        video_frames,
        video_rate,
    )
    from smec_fast.atomic import atomic_write_bytes, atomic_write_text
    from smec_fast.trainer import resolve_device

    if args.cam:
        raise ConfigError("--cam is for face crops; with --detect, --annotate DIR --annotate-cam paints each face's "
                          "CAM on the annotated copies")
    if args.annotate_cam and not args.annotate:
        raise ConfigError("--annotate-cam needs --annotate DIR (the CAMs are painted on the annotated copies)")
    if not 0.0 <= args.min_score <= 1.0:
        raise ConfigError(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    _positive(args.min_face, "--min-face")
    root = Path(args.images)
    photos_in, videos = _detect_inputs(root)
    device = resolve_device(args.device)
    detector = FaceDetector(device, min_face_size=args.min_face, min_score=args.min_score)
    trained = load_trained_model(args.checkpoint, device)
    if args.annotate_cam and not trained.model.has_cam:
        from smec_fast.model import NO_CAM

        raise ConfigError(f"--annotate-cam: {args.checkpoint}: {NO_CAM}")
    names = list(trained.class_names)
    show = sys.stderr.isatty()

    def annotated_path(path: Path, suffix: str) -> Path:
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        return Path(args.annotate) / relative.with_name(relative.name + suffix)

    rows, counts = [], {"faces": 0, "empty": 0, "unreadable": 0, "bad_photos": 0, "frames": 0}
    for photo in predict_photo_faces(trained, photos_in, detector, args.batch_size, progress=show,
                                     cams=args.annotate_cam):
        rows += _face_rows(photo, names)
        counts["faces"] += len(photo.faces)
        counts["empty"] += photo.problem is None and not photo.faces
        counts["unreadable"] += photo.problem is not None
        counts["bad_photos"] += photo.problem is not None
        if args.annotate and photo.problem is None:
            png = io.BytesIO()
            annotate_photo(photo.path, photo, trained.class_names).save(png, format="PNG")
            atomic_write_bytes(annotated_path(photo.path, ".png"), png.getvalue())
    for video in videos:
        writer = None
        try:
            frames = classify_faces(trained, video_frames(video, args.fps), detector, args.batch_size,
                                    cams=args.annotate_cam)
            for frame, image in tqdm(frames, desc=video.name, disable=not show, dynamic_ncols=True):
                rows += _face_rows(frame, names)
                counts["faces"] += len(frame.faces)
                counts["frames"] += 1
                if args.annotate:
                    if writer is None:
                        writer = VideoWriter(annotated_path(video, ".mp4"), args.fps or video_rate(video))
                    writer.write(annotate_photo(image, frame, trained.class_names))
        except DataError as err:
            from smec_fast.inference import PhotoFaces

            rows += _face_rows(PhotoFaces(video, [], [], problem=str(err)), names)
            counts["unreadable"] += 1
        finally:
            if writer is not None:
                writer.close()
    header = ["file", "frame", "time_s", "face", "status", *FACE_COLUMNS, "predicted", *names]
    buffer = io.StringIO()
    table = csv.writer(buffer)
    table.writerow(header)
    for row in rows:
        lead = [row["file"], "" if row["frame"] is None else row["frame"], "" if row["time_s"] is None else row["time_s"]]
        if row["status"] != "ok":
            table.writerow([*lead, "", row["status"]] + [""] * (len(header) - 5))
            continue
        location = face_cells(row["score"], row["box"], [row["landmarks"][n] for n in LANDMARK_NAMES])
        table.writerow([*lead, row["face"], "ok", *location, row["predicted"],
                        *(f"{row['probabilities'][n]:.6f}" for n in names)])
    atomic_write_text(args.out, buffer.getvalue())
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    read = len(photos_in) - counts["bad_photos"]
    where = f"{read} photos" + (f" and {counts['frames']} frames of {len(videos)} videos" if videos else "")
    print(f"{counts['faces']} faces in {where} classified -> {args.out}"
          + (f"; {counts['empty']} photos without a face" if counts["empty"] else "")
          + (f"; {counts['unreadable']} unreadable files listed" if counts["unreadable"] else "")
          + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from smec_fast.faces import align_tree

    _positive(args.workers, "--workers")
    _positive(args.min_face, "--min-face")
    if not 0.0 <= args.min_score <= 1.0:
        raise ConfigError(f"--min-score must be in [0, 1], got {args.min_score}")
    report = align_tree(args.src, args.dst, args.size, args.workers, args.min_face, args.min_score,
                        progress=args.progress == "true")
    print(f"{report['aligned']} of {report['photos']} photos aligned -> {args.dst}; "
          f"{len(report['several_faces'])} with several faces (the most confident kept), "
          f"{len(report['no_face'])} without a face, {len(report['unreadable'])} unreadable "
          f"(listed in {Path(args.dst) / 'align.json'})")
    return 0


def _dataset_of(trained, dataset: str | None, data: str | None):
    """The checkpoint's config pointed at another dataset or data folder, when asked for."""
    cfg = trained.config
    if dataset and dataset != cfg.dataset:
        if dataset != "synthetic" and not data:
            raise ConfigError(f"--data is required with --dataset {dataset}")
        return replace(cfg, dataset=dataset, data=data)
    return replace(cfg, data=data) if data else cfg


def cmd_audit(args: argparse.Namespace) -> int:
    from smec_fast.audit import AUDIT_FILE, CONTACT_SHEET_FILE, LabelAudit, class_probabilities, save_contact_sheet
    from smec_fast.data import labels_from_file
    from smec_fast.data.validate import validate_split
    from smec_fast.atomic import atomic_write_json

    trained, cfg, split, _, loader, amp = _checkpoint_on_split(args)
    validate_split(split, skip=False, what=args.split)  # one line naming a bad image, before any scoring
    given, clean = split.labels, None
    if args.labels:
        given, report = labels_from_file(split.names, split.labels, args.labels, split.num_classes)
        clean = split.labels
        log.info("%s: %d of %d labels differ from the dataset's", args.labels, report.changed, len(split))
    probs = class_probabilities(trained.model, loader, len(split), split.num_classes, amp)
    audit = LabelAudit(split, given, probs, clean=clean)
    out = Path(args.out) if args.out else trained.path.parent / f"audit-{cfg.dataset}-{args.split}"
    audit.write_csv(out / AUDIT_FILE)
    summary = {"checkpoint": str(trained.path), "epoch": trained.epoch, "method": cfg.method, "dataset": cfg.dataset,
               "data": cfg.data, "split": args.split, "labels": args.labels or "the dataset's", **audit.summary()}
    atomic_write_json(out / "label_audit.json", summary)
    if args.sheet > 0:
        save_contact_sheet(audit, out / CONTACT_SHEET_FILE, count=args.sheet)
    found = (f"; AUROC {summary['auroc']:.3f} for the {summary['flipped']} labels that differ"
             if summary.get("auroc") is not None else "")
    print(f"{len(split)} labels audited, {summary['believed_differs']} where the model believes another class{found}"
          f" -> {out / AUDIT_FILE}")
    return 0


def cmd_backbone(args: argparse.Namespace) -> int:
    from smec_fast.export import write_backbone

    card = write_backbone(args.checkpoint, args.out, args.head)
    accuracy = card["final_test_accuracy"]
    chosen = "" if card["epoch_chosen_by"] == "last epoch" else f", chosen by {card['epoch_chosen_by']}"
    print(f"{card['method']} on {card['dataset']} ({card['image_size']} px, {card['epochs']} epochs{chosen}"
          + (f", test accuracy {accuracy:.2f}" if accuracy is not None else "")
          + f") -> {args.out} (card {args.out}.json); start a run from it with --pretrained {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from smec_fast.export import FORMATS, export_model
    from smec_fast.inference import load_trained_model

    trained = load_trained_model(args.checkpoint)
    out = Path(args.out) if args.out else trained.path.with_suffix(FORMATS[args.format])
    export_model(trained, args.format, out)
    print(f"{args.format} model -> {out} (metadata {out.name}.json)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from smec_fast.sweep import parse_floats, parse_ints, parse_variants, run_sweep

    variants = parse_variants(args.methods)
    rates = parse_floats(args.noise_rates, "--noise-rates")
    seeds = parse_ints(args.seeds, "--seeds")
    base = load_config_file(args.config) if args.config else {}
    base.update(option_values({key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_")},
                              "command line"))
    command = " ".join(["smec-fast", *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    result = run_sweep(base, variants, rates, seeds, args.out, command=command)
    print(f"{len(result['cells'])} runs -> {Path(args.out) / 'table.md'}, {Path(args.out) / 'sweep.json'}, "
          f"{Path(args.out) / 'balanced_accuracy.png'}")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    import torch

    from smec_fast.data import load_split
    from smec_fast.data.images import list_images
    from smec_fast.inference import cam_panels, load_trained_model
    from smec_fast.plots import save_cam_grid
    from smec_fast.trainer import resolve_device

    _positive(args.num, "--num")
    device = resolve_device(args.device)
    models = [load_trained_model(path, device) for path in args.checkpoints]
    for path, trained in zip(args.checkpoints, models):
        if not trained.model.has_cam:
            from smec_fast.model import NO_CAM

            raise ConfigError(f"{path}: {NO_CAM}")
    names = models[0].class_names
    for trained in models[1:]:
        if trained.class_names != names:
            raise ConfigError(f"{trained.path} has classes {', '.join(trained.class_names)}, "
                              f"{models[0].path} has {', '.join(names)}: compare models of the same classes")
    titles = [m.config.method for m in models]
    if args.labels:
        titles = [t.strip() for t in args.labels.split(",")]
        if len(titles) != len(models):
            raise ConfigError(f"--labels gives {len(titles)} titles for {len(models)} checkpoints")
    if args.images:
        sources = list_images(args.images)[: args.num]
        labels: list = [None] * len(sources)
        row_titles = [p.name for p in sources]
    else:
        split = load_split(models[0].config, "test")
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed)).tolist()
        chosen: list[int] = []
        while len(chosen) < min(args.num, len(split)):  # one image per class in turn, as in the paper's Fig. 4
            for k in range(len(names)):
                pick = next((i for i in order if i not in chosen and int(split.labels[i]) == k), None)
                if pick is not None and len(chosen) < args.num:
                    chosen.append(pick)
        labels = [int(split.labels[i]) for i in chosen]
        sources = [split.images[i] if split.images is not None else split.paths[i] for i in chosen]
        row_titles = [names[k] for k in labels]
    panels = cam_panels(models, sources, labels)
    save_cam_grid(panels, ["input", *titles], row_titles, args.out)
    print(f"CAMs of {len(sources)} images x {len(models)} models -> {args.out}")
    return 0


def cmd_synth_rafdb(args: argparse.Namespace) -> int:
    import time

    from smec_fast.data.rafdb import LABEL_FILE
    from smec_fast.data.synthetic_rafdb import write_synthetic_rafdb

    for value, option in ((args.train, "--train"), (args.test, "--test"), (args.size, "--size")):
        _positive(value, option)
    if args.workers is not None:
        _positive(args.workers, "--workers")
    if (Path(args.out) / LABEL_FILE).exists():
        raise ConfigError(f"{args.out} already holds a RAF-DB tree ({LABEL_FILE}); choose another folder")
    start = time.perf_counter()
    written = write_synthetic_rafdb(args.out, args.train, args.test, args.size, args.seed, args.workers)
    written["seconds"] = time.perf_counter() - start
    if args.report:
        from smec_fast.atomic import atomic_write_json

        atomic_write_json(args.report, [written])
    print(f"{written['files']} faces ({args.train} train, {args.test} test, {args.size} px) in "
          f"{time.perf_counter() - start:.1f} s -> {args.out} (--dataset rafdb --data {args.out})")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    import torch

    from smec_fast.data.noise import parse_label_file, symmetric_noise, write_label_file

    if not 0 <= args.rate < 1:
        raise ConfigError(f"--rate must be in [0, 1), got {args.rate}")
    entries = [e for e in parse_label_file(args.labels, args.num_classes) if e.name.startswith(args.prefix)]
    if not entries:
        raise ConfigError(f"{args.labels}: no line starts with --prefix {args.prefix!r}")
    clean = torch.tensor([e.label for e in entries])
    noisy = symmetric_noise(clean, args.rate, args.num_classes, args.seed)
    write_label_file(args.out, [e.name for e in entries], noisy)
    print(f"{args.out}: {int((noisy != clean).sum())} of {len(entries)} labels changed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if unknown:
            option = unknown[0]
            key = option[2:].split("=")[0].replace("-", "_")
            if args.command == "sweep" and key in ("method", "noise_rate", "seed", "resume"):
                raise ConfigError(f"{option} is set by the sweep for each run; use --methods, --noise-rates, --seeds")
            if option.startswith("--") and args.command in ("train", "sweep"):
                raise ConfigError(unknown_key_message(key, "command line"))
            raise ConfigError(f"unrecognized argument {option!r} for '{args.command}'")
        return args.func(args)
    except SmecFastError as err:
        if debug:
            raise
        print(f"{PROG}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted; a training run continues from its last finished epoch with --resume",
              file=sys.stderr)
        return 130
    except Exception as err:  # anything unforeseen still ends in one line, with the traceback behind --debug
        if debug:
            raise
        print(f"{PROG}: error: {type(err).__name__}: {first_line(err)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
