"""The CLI's conventions, at parser level (no Ray, no job run): switches, timm's flag names,
help that says each default once and marks what is required, ``--version``, and a weights
converter whose ``--help`` is help. Before, ``--use-gpu`` alone was an error, ``--img-size`` was
unknown, ``--image`` silently meant ``--image-size``, and ``python -m birdray.model.weights
--help`` wrote a file named ``--help``."""

from __future__ import annotations

import pytest

from birdray import cli
from birdray import config as cfglib


def _parse(job: str, argv: list[str]):
    parser, config_cls, _ = cli.build_parser(job, cli.JOBS[job])
    args = parser.parse_args(argv)
    del args.debug
    return cfglib.resolve(config_cls, args)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--use-gpu"], True),
        (["--no-use-gpu"], False),
        (["--use-gpu", "false"], False),  # the older form keeps working
        (["--use-gpu", "true"], True),
        (["--use-gpu=no"], False),
        ([], False),
    ],
)
def test_boolean_fields_are_switches(argv, expected):
    assert _parse("train", ["--epochs", "1", *argv]).use_gpu is expected


def test_bad_switch_value_and_abbreviations_are_usage_errors():
    with pytest.raises(cfglib.UsageError, match="--use-gpu"):
        _parse("train", ["--use-gpu=maybe"])
    with pytest.raises(cfglib.UsageError, match="--image"):
        _parse("train", ["--image", "64"])  # not a prefix of --image-size


def test_list_flags_read_yaml_and_a_bare_word_yaml_refuses_is_that_word():
    """``--extensions '*'`` (what --help and the "nothing to score" error suggest) was a
    ``yaml.scanner.ScannerError`` traceback; a malformed list still is the user's error."""
    places = ["--input", "photos", "--output", "scored"]
    assert _parse("score", [*places, "--extensions", "*"]).extensions == ["*"]
    assert _parse("score", [*places, "--extensions", "[jpg, png]"]).extensions == ["jpg", "png"]
    assert _parse("benchmark", ["--concurrency", "[1, 8]"]).concurrency == [1, 8]
    for argv in ([*places, "--extensions", "[jpg"], ["--concurrency", "{a"]):
        with pytest.raises(cfglib.ConfigError, match=f"{argv[-2]}.*not valid YAML"):
            _parse("score" if "--input" in argv else "benchmark", argv)


def test_a_switch_before_a_positional_leaves_it_alone():
    cfg = _parse("benchmark", ["--smoke", "ingest"])
    assert cfg.smoke is True and cfg.stage == "ingest"


def test_a_positional_and_its_flag_fill_one_field_and_never_disagree_silently():
    # before, an absent positional overwrote its flag: `benchmark --stage score` ran every stage
    assert _parse("benchmark", ["--stage", "score"]).stage == "score"
    assert _parse("benchmark", ["score", "--stage", "score"]).stage == "score"
    assert _parse("benchmark", []).stage == "all"
    with pytest.raises(cfglib.UsageError, match="'train' by position and 'score' by --stage"):
        _parse("benchmark", ["train", "--stage", "score"])
    registry = _parse("registry", ["--action", "list"])
    assert registry.action == "list" and not registry.args
    alias = _parse("registry", ["alias", "set", "best", "3"])
    assert alias.action == "alias" and alias.args == ["set", "best", "3"]


def test_timm_flag_names_are_aliases():
    timm_argv = "--model resnet18 --img-size 64 --smoothing 0.2 --aa rand-m9 --lr-base 0.2"
    cfg = _parse("train", timm_argv.split())
    assert (cfg.arch, cfg.image_size, cfg.label_smoothing) == ("resnet18", 64, 0.2)
    assert (cfg.auto_augment, cfg.lr) == ("rand-m9", 0.2)
    sweep = _parse("tune", ["--img-size", "[96, 128]", "--smoothing", "[0.0]"])
    assert sweep.image_size == [96, 128] and sweep.label_smoothing == [0.0]


@pytest.mark.parametrize("job", sorted(cli.JOBS))
def test_help_says_each_default_once_and_documents_positionals(job):
    parser, _, _ = cli.build_parser(job, cli.JOBS[job])
    text = parser.format_help()
    assert "(default: '')" not in text
    for action in parser._actions:
        assert action.help, f"{job}: {action.dest} has no help"
        assert action.help.lower().count("default") <= 1, action.help


def test_required_flags_and_positionals_say_so():
    score = cli.build_parser("score", cli.JOBS["score"])[0].format_help()
    assert score.count("(required)") == 2
    registry = cli.build_parser("registry", cli.JOBS["registry"])[0].format_help()
    text = " ".join(registry.split())
    assert "positional arguments: action list | show | add" in text
    assert "(the same as --action) args the action's words" in text


def test_version(capsys):
    from importlib import metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"birdray {metadata.version('birdray')}"


def test_explain_image_id_has_no_zero_default(tmp_path, capsys):
    assert _parse("explain", ["--image", "x.jpg"]).image_id is None
    assert cli.main(["explain", "--dataset", str(tmp_path)]) == 2
    assert "--image-id: is required with --dataset" in capsys.readouterr().err
    assert cli.main(["explain", "--dataset", str(tmp_path), "--image-id", "0"]) == 2
    assert "start at 1" in capsys.readouterr().err


def test_weights_converter_help_is_help(tmp_path, monkeypatch, capsys):
    from birdray.model import weights

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        weights.main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
