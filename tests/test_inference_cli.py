"""``dropbear train``: trains on digits, writes a verified version, refuses weak models."""

import pytest
from dropbear import cli
from dropbear.inference import ModelRepository


def test_subcommands_are_registered_and_parsed():
    assert "train" in cli.SUBCOMMANDS
    args = cli.build_parser().parse_args(
        ["train", "m", "--option", "hidden=[16, 8]", "--option", "stem=small", "--epochs", "3"]
    )
    assert args.option == [("hidden", [16, 8]), ("stem", "small")] and args.epochs == 3
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "m", "--option", "novalue"])


def test_train_writes_a_model_into_the_repository(tmp_path, capsys):
    argv = ["train", "quick-mlp", "--models", str(tmp_path), "--architecture", "mlp",
            "--option", "hidden=[32]", "--epochs", "3", "--min-accuracy", "0.8"]  # fmt: skip
    assert cli.main(argv) == 0
    model = ModelRepository(tmp_path).load("quick-mlp")
    out = capsys.readouterr()
    assert f"version {model.version} written" in out.out
    assert "epoch" in out.err  # the progress bar
    assert (tmp_path / "quick-mlp" / model.version / "training.toml").is_file()


def test_train_refuses_a_model_below_the_minimum_accuracy(tmp_path, capsys):
    argv = ["train", "weak", "--models", str(tmp_path), "--architecture", "mlp",
            "--option", "hidden=[4]", "--epochs", "1", "--learning-rate", "1e-5"]  # fmt: skip
    assert cli.main(argv) == 1
    assert "below --min-accuracy 0.95; nothing written" in capsys.readouterr().err
    assert ModelRepository(tmp_path).names() == []


def test_train_without_recipe_or_architecture_says_what_is_missing(tmp_path, capsys):
    assert cli.main(["train", "mystery", "--models", str(tmp_path)]) == 2
    assert "'mystery' has no recipe" in capsys.readouterr().err
