"""Command line: `smec-fast train | evaluate | predict | audit | export | backbone | sweep | align | cam | noise |
synth-rafdb`.

Every TrainConfig field is an option of `train` (`--batch-size 32` or `--batch_size 32`); a YAML/JSON file
given with `--config` sets values that the command line overrides. Any error prints one line naming what is
wrong and exits non-zero (2 for bad input, 1 for anything unexpected); `--debug` shows the traceback.

Each command is a parser (`_*_parser`) and a function (`cmd_*`) that checks its options and calls the package's
functions; the work lives in those. The module imports no torch, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from smec_fast.config import (
    AMP_MODES,
    DATASETS,
    FIELDS,
    SUBSETS,
    TrainConfig,
    load_config_file,
    option_values,
    resolve_config,
    unknown_key_message,
)
from smec_fast.errors import ConfigError, SmecFastError, first_line
from smec_fast.export import BACKBONE_HEADS, FORMATS
from smec_fast.grid import SPLITS, grid_text

PROG = "smec-fast"
log = logging.getLogger(__name__)

CHECKPOINT_HELP = "checkpoint.pt (last epoch) or selected.pt (best validation epoch) of a `smec-fast train` run"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become ConfigError, printed as one line like every other error."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="SMEC trainer for noisy-label facial expression recognition",
                     allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_train_parser, _evaluate_parser, _predict_parser, _audit_parser, _backbone_parser, _export_parser,
                _sweep_parser, _align_parser, _cam_parser, _synth_rafdb_parser, _noise_parser):
        command = add(sub)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks of errors")
    return parser


# --- parsers ------------------------------------------------------------------------------------------------------


def _add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Every TrainConfig field as an option (both spellings), and --split, another spelling of --grid."""
    for name, f in FIELDS.items():
        if name in exclude:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        default = grid_text(TrainConfig().grid) if name == "grid" else ("none" if f.default is None else f.default)
        if "bool" in kind:  # --flag alone means true
            parser.add_argument(*flags, dest=f"cfg_{name}", default=argparse.SUPPRESS, metavar="VALUE",
                                help=f"(default {default})", nargs="?", const="true")
        else:
            parser.add_argument(*flags, dest=f"cfg_{name}", default=argparse.SUPPRESS, metavar="VALUE",
                                help=f"(default {default})")
    parser.add_argument("--split", dest="cfg_split", default=argparse.SUPPRESS, metavar="VALUE",
                        help=f"{' or '.join(SPLITS)}: another spelling of --grid "
                             f"({', '.join(f'{k} = {grid_text(v)}' for k, v in SPLITS.items())})")


def _add_subset_options(parser: argparse.ArgumentParser, subset: str, out_prefix: str) -> None:
    """Options of the commands that score a checkpoint on a subset of a dataset (evaluate, audit)."""
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--dataset", choices=DATASETS, help="dataset (default: the one the checkpoint was trained on)")
    parser.add_argument("--data", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--subset", choices=SUBSETS, default=None, help=f"which images to score (default {subset})")
    parser.add_argument("--split", choices=SUBSETS, dest="old_subset", default=None,
                        help="the old name of --subset (train's --split names SMEC's pieces); still accepted")
    parser.set_defaults(default_subset=subset)
    parser.add_argument("--out", help=f"output folder (default: {out_prefix}-DATASET-SUBSET beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto",
                        help="autocast dtype (default auto: as the run evaluated itself, i.e. bf16 on CUDA and on "
                             "CPUs with native bf16 unless the run was trained with --amp off)")


def _train_parser(sub) -> argparse.ArgumentParser:
    train = sub.add_parser("train", help="train a model (default: SMEC on the embedded synthetic faces)",
                           allow_abbrev=False, description="Train SMEC or a baseline. Every option below sets "
                           "the config field of the same name; see smec_fast/config.py for what each means.")
    train.add_argument("--config", help="YAML or JSON file of options (the command line overrides it)")
    _add_config_options(train)
    train.set_defaults(func=cmd_train)
    return train


def _evaluate_parser(sub) -> argparse.ArgumentParser:
    evaluate = sub.add_parser("evaluate", allow_abbrev=False, help="score a checkpoint on a dataset's subset")
    _add_subset_options(evaluate, "test", "eval")
    evaluate.set_defaults(func=cmd_evaluate)
    return evaluate


def _predict_parser(sub) -> argparse.ArgumentParser:
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
    predict.set_defaults(func=cmd_predict)
    return predict


def _audit_parser(sub) -> argparse.ArgumentParser:
    audit = sub.add_parser("audit", allow_abbrev=False, help="rank a dataset's labels by how likely a model finds "
                           "them wrong", description="Score every image of a subset with a trained model and write "
                           "label_audit.csv (most suspect label first) and label_audit.png (a contact sheet of the "
                           "most suspect images). With --labels, audit the labels of that file (e.g. a run's "
                           "train_labels.txt) against the dataset's own, and report how well the ranking finds the "
                           "ones that differ.")
    _add_subset_options(audit, "train", "audit")
    audit.add_argument("--labels", help="EAC-format label file to audit instead of the dataset's own labels")
    audit.add_argument("--sheet", type=int, default=24, help="images on the contact sheet (default 24; 0: none)")
    audit.set_defaults(func=cmd_audit)
    return audit


def _backbone_parser(sub) -> argparse.ArgumentParser:
    backbone = sub.add_parser("backbone", allow_abbrev=False, help="write a run's network as weights to start "
                              "other runs from", description="Write a trained run's weights (and its class names) "
                              "to FILE, for --pretrained FILE, with a card FILE.json saying where they come from.")
    backbone.add_argument("checkpoint", help=CHECKPOINT_HELP)
    backbone.add_argument("--out", required=True, help="weight file to write, e.g. fer2013-halfA.pt")
    backbone.add_argument("--head", choices=BACKBONE_HEADS, default="keep",
                          help="keep the classifier in the file (default; --pretrained-head decides at load time) "
                               "or leave it out")
    backbone.set_defaults(func=cmd_backbone)
    return backbone


def _export_parser(sub) -> argparse.ArgumentParser:
    export = sub.add_parser("export", allow_abbrev=False, help="export a checkpoint's model")
    export.add_argument("checkpoint", help=CHECKPOINT_HELP)
    export.add_argument("--format", required=True, choices=list(FORMATS))
    export.add_argument("--out", help="file to write (default: the checkpoint's name with .pt2, .onnx or .ts); "
                                      "torchscript is deprecated by PyTorch, pt2 replaces it")
    export.set_defaults(func=cmd_export)
    return export


def _sweep_parser(sub) -> argparse.ArgumentParser:
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
    sweep.add_argument("--reference", help="the variant (its label) that table.md puts against every other one, "
                                           "seed by seed (default: the last in --methods)")
    sweep.add_argument("--config", help="YAML or JSON file of options for every run")
    _add_config_options(sweep, exclude=("method", "noise_rate", "seed", "out", "resume"))
    sweep.set_defaults(func=cmd_sweep)
    return sweep


def _align_parser(sub) -> argparse.ArgumentParser:
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
    align.set_defaults(func=cmd_align)
    return align


def _cam_parser(sub) -> argparse.ArgumentParser:
    figure = sub.add_parser("cam", allow_abbrev=False, help="CAM overlays of several models side by side (Fig. 4)")
    figure.add_argument("checkpoints", nargs="+", help="checkpoints to compare, e.g. a CE run and a SMEC run")
    figure.add_argument("--images", help="image file or folder (default: test images of the first checkpoint's "
                                         "dataset, one per class, CAM of the true class)")
    figure.add_argument("--num", type=int, default=7, help="number of images (default 7)")
    figure.add_argument("--labels", help="comma-separated column titles (default: each checkpoint's method)")
    figure.add_argument("--out", default="cams.png", help="PNG to write (default cams.png)")
    figure.add_argument("--seed", type=int, default=0, help="choice of dataset images")
    figure.add_argument("--device", default="auto")
    figure.set_defaults(func=cmd_cam)
    return figure


def _synth_rafdb_parser(sub) -> argparse.ArgumentParser:
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
    synth.set_defaults(func=cmd_synth_rafdb)
    return synth


def _noise_parser(sub) -> argparse.ArgumentParser:
    noise = sub.add_parser("noise", allow_abbrev=False, help="write an EAC-format label file with symmetric noise")
    noise.add_argument("--labels", required=True, help="clean label file (name label lines, 1-based labels)")
    noise.add_argument("--rate", required=True, type=float, help="noise rate in [0, 1)")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--prefix", default="train_",
                       help="only lines whose name starts with this are noised and written (default train_)")
    noise.add_argument("--num-classes", type=int, default=7)
    noise.add_argument("--out", required=True, help="file to write")
    noise.set_defaults(func=cmd_noise)
    return noise


# --- commands -----------------------------------------------------------------------------------------------------


def _config_options(args: argparse.Namespace) -> dict:
    """The config fields the command line gave (`--key VALUE` and --split), as option_values reads them."""
    return option_values({key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_")},
                         "command line")


def config_from_args(args: argparse.Namespace):
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    return resolve_config(file_values, _config_options(args), warn_unused=True)


def _positive(value: int, option: str) -> None:
    if value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")


def _score(value: float, option: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{option} must be in [0, 1], got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from smec_fast.api import train

    cfg = config_from_args(args)
    metrics = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 reports
        return 0
    print(f"{cfg.method}: best accuracy {metrics['best_accuracy']:.2f}, final accuracy "
          f"{metrics['final_accuracy']:.2f}, final balanced accuracy {metrics['final_balanced_accuracy']:.2f} "
          f"-> {Path(cfg.out) / 'metrics.json'}")
    return 0


def _open_subset(args: argparse.Namespace):
    """evaluate's and audit's common start: the checkpoint on the subset the options name."""
    from smec_fast.scoring import open_subset

    subset = args.subset or args.old_subset or args.default_subset
    if args.old_subset is not None:
        if args.subset is not None and args.subset != args.old_subset:
            raise ConfigError(f"--split {args.old_subset} and --subset {args.subset} name different subsets; "
                              f"give --subset")
        log.warning("note: --split is the old name of --subset (train's --split names SMEC's pieces)")
    _positive(args.batch_size, "--batch-size")
    return open_subset(args.checkpoint, subset, args.dataset, args.data, args.batch_size, args.num_workers,
                       args.device, args.amp)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from smec_fast.scoring import evaluate_checkpoint

    result, out = evaluate_checkpoint(_open_subset(args), args.out)
    print(f"accuracy {result['accuracy']:.2f}, balanced accuracy {result['balanced_accuracy']:.2f} "
          f"on {result['num_images']} images -> {out / 'evaluation.json'}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from smec_fast.audit import AUDIT_FILE
    from smec_fast.scoring import audit_checkpoint

    summary, out = audit_checkpoint(_open_subset(args), args.labels, args.out, args.sheet)
    found = (f"; AUROC {summary['auroc']:.3f} for the {summary['flipped']} labels that differ"
             if summary.get("auroc") is not None else "")
    print(f"{summary['images']} labels audited, {summary['believed_differs']} where the model believes another "
          f"class{found} -> {out / AUDIT_FILE}")
    return 0


def _require_cams(trained, option: str) -> None:
    """ConfigError naming `option` for a model without class activation maps."""
    if not trained.model.has_cam:
        from smec_fast.model import NO_CAM

        raise ConfigError(f"{option}{trained.path}: {NO_CAM}")


def cmd_predict(args: argparse.Namespace) -> int:
    from smec_fast.api import load, results_table, write_cam_overlays
    from smec_fast.atomic import atomic_write_text
    from smec_fast.data.images import list_images

    _positive(args.batch_size, "--batch-size")
    if args.detect:
        return _predict_detected(args)
    for option in ("jsonl", "annotate", "annotate_cam"):
        if getattr(args, option):
            raise ConfigError(f"--{option.replace('_', '-')} needs --detect")
    model = load(args.checkpoint, args.device)
    if args.cam:
        _require_cams(model.trained, "--cam: ")
    root = Path(args.images)
    files = list_images(root)
    results = model.predict(files, cam=bool(args.cam), batch_size=args.batch_size, skip_bad=args.skip_bad_images)
    skipped = [r for r in results if r.problem is not None]
    for r in skipped:
        log.warning("skipping %s", r.problem)
    if len(skipped) == len(results):
        raise SmecFastError(f"{root}: none of its {len(files)} image files could be read")
    atomic_write_text(args.out, results_table(results, model.classes))
    if args.cam:
        write_cam_overlays(results, root, args.cam)
    print(f"{len(results) - len(skipped)} images classified -> {args.out}"
          + (f"; CAM overlays in {args.cam}" if args.cam else "")
          + (f"; {len(skipped)} unreadable images skipped" if skipped else ""))
    return 0


def _predict_detected(args: argparse.Namespace) -> int:
    """`predict --detect`: every face of every photo and of every sampled video frame, one row each."""
    from smec_fast.api import load
    from smec_fast.atomic import atomic_write_text
    from smec_fast.media import face_json_lines, face_table

    if args.cam:
        raise ConfigError("--cam is for face crops; with --detect, --annotate DIR --annotate-cam paints each face's "
                          "CAM on the annotated copies")
    if args.annotate_cam and not args.annotate:
        raise ConfigError("--annotate-cam needs --annotate DIR (the CAMs are painted on the annotated copies)")
    _score(args.min_score, "--min-score")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    _positive(args.min_face, "--min-face")
    model = load(args.checkpoint, args.device)
    if args.annotate_cam:
        _require_cams(model.trained, "--annotate-cam: ")
    model.detector(args.min_face, args.min_score)  # the detector's install is checked before any file is read
    report = model.predict_media(args.images, args.fps, args.annotate, args.annotate_cam, args.batch_size,
                                 args.min_face, args.min_score)
    names = list(model.classes)
    atomic_write_text(args.out, face_table(report.rows, names))
    if args.jsonl:
        atomic_write_text(args.jsonl, face_json_lines(report.rows))
    where = f"{report.photos_read} photos" + (
        f" and {report.frames} frames of {report.videos} videos" if report.videos else "")
    print(f"{report.faces} faces in {where} classified -> {args.out}"
          + (f"; {report.empty_photos} photos without a face" if report.empty_photos else "")
          + (f"; {report.unreadable} unreadable files listed" if report.unreadable else "")
          + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from smec_fast.faces import align_tree

    _positive(args.workers, "--workers")
    _positive(args.min_face, "--min-face")
    _score(args.min_score, "--min-score")
    report = align_tree(args.src, args.dst, args.size, args.workers, args.min_face, args.min_score,
                        progress=args.progress == "true")
    print(f"{report['aligned']} of {report['photos']} photos aligned -> {args.dst}; "
          f"{len(report['several_faces'])} with several faces (the most confident kept), "
          f"{len(report['no_face'])} without a face, {len(report['unreadable'])} unreadable "
          f"(listed in {Path(args.dst) / 'align.json'})")
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
    from smec_fast.export import export_model
    from smec_fast.inference import load_trained_model

    trained = load_trained_model(args.checkpoint)
    out = Path(args.out) if args.out else trained.path.with_suffix(FORMATS[args.format])
    export_model(trained, args.format, out)
    print(f"{args.format} model -> {out} (metadata {out.name}.json)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from smec_fast.sweeps import parse_floats, parse_ints, parse_variants, run_sweep

    variants = parse_variants(args.methods)
    rates = parse_floats(args.noise_rates, "--noise-rates")
    seeds = parse_ints(args.seeds, "--seeds")
    base = load_config_file(args.config) if args.config else {}
    base.update(_config_options(args))
    command = " ".join(["smec-fast", *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    result = run_sweep(base, variants, rates, seeds, args.out, command=command, reference=args.reference)
    print(f"{len(result['cells'])} runs -> {Path(args.out) / 'table.md'}, {Path(args.out) / 'sweep.json'}, "
          f"{Path(args.out) / 'balanced_accuracy.png'}")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from smec_fast.inference import cam_figure

    _positive(args.num, "--num")
    titles = [t.strip() for t in args.labels.split(",")] if args.labels else None
    images = cam_figure(args.checkpoints, args.out, images=args.images, num=args.num, titles=titles,
                        seed=args.seed, device=args.device)
    print(f"CAMs of {images} images x {len(args.checkpoints)} models -> {args.out}")
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
          f"{written['seconds']:.1f} s -> {args.out} (--dataset rafdb --data {args.out})")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    from smec_fast.data.noise import write_noisy_label_file

    if not 0 <= args.rate < 1:
        raise ConfigError(f"--rate must be in [0, 1), got {args.rate}")
    changed, total = write_noisy_label_file(args.labels, args.out, args.rate, args.seed, args.num_classes,
                                            args.prefix)
    print(f"{args.out}: {changed} of {total} labels changed")
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
