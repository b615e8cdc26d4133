"""Command line: `smec-fast train`, `smec-fast noise`.

Every TrainConfig field is an option of `train` (`--batch-size 32` or `--batch_size 32`); a YAML/JSON file
given with `--config` sets defaults that the command line overrides. Errors in the user's input print one
line and exit with status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

from smec_fast.config import FIELDS, coerce, load_config_file, resolve_config, unknown_key_message
from smec_fast.errors import ConfigError, SmecFastError

PROG = "smec-fast"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for name, f in FIELDS.items():
        flags = [f"--{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{name}")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        default = f.default if f.default is not None else "none"
        if name == "grid":
            default = "x".join(map(str, f.default))
        extra = {"nargs": "?", "const": "true"} if "bool" in kind else {}
        parser.add_argument(*flags, dest=f"cfg_{name}", default=argparse.SUPPRESS, metavar="VALUE",
                            help=f"(default {default})", **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="SMEC trainer for noisy-label facial expression recognition",
                                     allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (default: SMEC on the embedded synthetic faces)",
                           allow_abbrev=False, description="Train SMEC or a baseline. Every option below sets "
                           "the config field of the same name; see smec_fast/config.py for what each means.")
    train.add_argument("--config", help="YAML or JSON file of options (the command line overrides it)")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_config_options(train)
    train.set_defaults(func=cmd_train)

    noise = sub.add_parser("noise", allow_abbrev=False,
                           help="write an EAC-format label file with symmetric noise")
    noise.add_argument("--labels", required=True, help="clean label file (name label lines, 1-based labels)")
    noise.add_argument("--rate", required=True, type=float, help="noise rate in [0, 1)")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--prefix", default="train_",
                       help="only lines whose name starts with this are noised and written (default train_)")
    noise.add_argument("--num-classes", type=int, default=7)
    noise.add_argument("--out", required=True, help="file to write")
    noise.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    noise.set_defaults(func=cmd_noise)
    return parser


def config_from_args(args: argparse.Namespace):
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    cli_values = {key[4:]: coerce(key[4:], value, "command line")
                  for key, value in vars(args).items() if key.startswith("cfg_")}
    return resolve_config(file_values, cli_values)


def cmd_train(args: argparse.Namespace) -> int:
    from smec_fast.trainer import train

    cfg = config_from_args(args)
    metrics = train(cfg)
    print(f"{cfg.method}: best accuracy {metrics['best_accuracy']:.2f}, final accuracy "
          f"{metrics['final_accuracy']:.2f}, final balanced accuracy {metrics['final_balanced_accuracy']:.2f} "
          f"-> {cfg.out}/metrics.json")
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
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = getattr(args, "debug", False)
    try:
        if args.command is None:
            parser.print_help()
            return 2
        if unknown:
            option = unknown[0]
            if option.startswith("--") and args.command == "train":
                raise ConfigError(unknown_key_message(option[2:].split("=")[0].replace("-", "_"), "command line"))
            raise ConfigError(f"unrecognized argument {option!r} for '{args.command}'")
        return args.func(args)
    except SmecFastError as err:
        if debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted; the last finished epoch is in the checkpoint, continue with --resume",
              file=sys.stderr)
        return 130
