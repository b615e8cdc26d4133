import json

import pytest

from smec_fast.cli import build_parser, config_from_args
from smec_fast.config import TrainConfig, config_from_dict, load_config_file, resolve_config
from smec_fast.errors import ConfigError
from smec_fast.methods import SmecMethod


def parse(argv):
    args, unknown = build_parser().parse_known_args(["train", *argv])
    assert not unknown
    return config_from_args(args)


def test_defaults_hold_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.image_size, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.epochs) == (224, 64, 1e-4, 1e-4, 60)
    assert cfg.method == "smec" and cfg.grid == (1, 2) and cfg.lr_decay == 1.0
    assert (cfg.beta, cfg.lambda_elr) == (0.7, 3.0)


def test_synthetic_preset_applies_only_where_not_overridden():
    cfg = resolve_config()
    assert cfg.dataset == "synthetic" and cfg.image_size == 64
    cfg = resolve_config(cli_values={"image_size": 96})
    assert cfg.image_size == 96
    cfg = resolve_config(cli_values={"dataset": "rafdb", "data": "x"})
    assert cfg.image_size == 224 and cfg.lr == 1e-4


@pytest.mark.parametrize("rate,expected", [(0.0, 2.0), (0.1, 3.0), (0.3, 3.0), (0.4, 3.0), (0.5, 5.0), (0.6, 5.0)])
def test_lambda_con_follows_the_noise_rate(rate, expected):
    assert SmecMethod.default_lambda_con(rate) == expected


def test_cli_overrides_in_both_spellings():
    cfg = parse(["--batch-size", "32", "--noise_rate", "0.3", "--grid", "2x2", "--lambda-con", "4",
                 "--resume", "--max-train-samples", "none", "--pretrained", "w.pth"])
    assert cfg.batch_size == 32 and cfg.noise_rate == 0.3 and cfg.grid == (2, 2) and cfg.lambda_con == 4.0
    assert cfg.resume is True and cfg.max_train_samples is None and cfg.pretrained == "w.pth"


def test_file_then_cli_precedence(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 3\nlr: 0.01\ngrid: [2, 1]\nmethod: elr\n")
    cfg = parse(["--config", str(yaml_file), "--lr", "0.5"])
    assert cfg.epochs == 3 and cfg.lr == 0.5 and cfg.grid == (2, 1) and cfg.method == "elr"
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"batch_size": 8, "noise-rate": 0.2}))
    assert load_config_file(json_file) == {"batch_size": 8, "noise_rate": 0.2}


@pytest.mark.parametrize("argv,grid,split", [
    ([], (1, 2), "left-right"),
    (["--split", "top-bottom"], (2, 1), "top-bottom"),
    (["--split", "left-right"], (1, 2), "left-right"),
    (["--grid", "2x1"], (2, 1), "top-bottom"),
    (["--grid", "2x2"], (2, 2), "2x2"),
    (["--grid", "1x1"], (1, 1), "whole"),
    (["--split", "top-bottom", "--grid", "2x1"], (2, 1), "top-bottom"),
])
def test_split_names_the_grid_in_image_terms(argv, grid, split):
    cfg = parse(argv)
    assert (cfg.grid, cfg.split) == (grid, split)
    assert cfg.to_dict()["split"] == split  # written to config.json


def test_split_and_grid_must_agree_and_the_later_source_wins(tmp_path):
    with pytest.raises(ConfigError, match="--split top-bottom is grid 2x1, but --grid is 1x2"):
        parse(["--split", "top-bottom", "--grid", "1x2"])
    with pytest.raises(ConfigError, match="--split must be one of left-right, top-bottom"):
        parse(["--split", "diagonal"])
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("split: top-bottom\n")
    assert parse(["--config", str(yaml_file)]).grid == (2, 1)
    assert parse(["--config", str(yaml_file), "--grid", "2x2"]).split == "2x2"
    yaml_file.write_text("grid: [2, 2]\n")
    assert parse(["--config", str(yaml_file), "--split", "top-bottom"]).grid == (2, 1)


def test_grid_is_the_one_field_and_saved_configs_of_every_grid_load_back():
    assert "split" not in TrainConfig.__dataclass_fields__
    for grid in ((1, 2), (2, 1), (2, 2), (1, 1)):
        saved = TrainConfig(grid=grid).to_dict()  # config.json and checkpoints hold the grid and its name
        assert config_from_dict(saved).grid == grid
    from smec_fast.sweeps import parse_variants

    (variant,) = parse_variants("smec:split=top-bottom:label=tb")
    assert variant.overrides == {"grid": (2, 1)}
    with pytest.raises(ConfigError, match="--split must be one of"):
        parse_variants("smec:split=2x2")


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown option 'learning_rate'"):
        load_config_file(bad)
    from smec_fast.cli import main

    assert main(["train", "--noise-rat", "0.2"]) == 2


def test_unknown_cli_option_message(capsys):
    from smec_fast.cli import main

    assert main(["train", "--batchsize", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --batchsize" in err and "batch-size" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--method", "foo"], "--method must be one of"),
    (["--noise-rate", "1.5"], "--noise-rate must be in"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--grid", "1x"], "--grid must look like"),
    (["--epochs", "two"], "epochs must be an integer"),
    (["--dataset", "rafdb"], "--data is required"),
    (["--noise-rate", "0.2", "--noise-file", "n.txt"], "either --noise-file or --noise-rate"),
    (["--compile", "yes"], "--compile must be one of auto, on, off"),
    (["--compile-mode", "fast"], "--compile-mode must be one of default, reduce-overhead"),
    (["--channels-last", "true"], "--channels-last must be one of auto, on, off"),
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_bad_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        load_config_file(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config_file(listy)
