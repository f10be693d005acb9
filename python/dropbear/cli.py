"""The ``dropbear`` command.

Each subcommand is one function ``run(args) -> exit status`` registered with
:func:`subcommand`, together with a function that adds its arguments; :func:`main` builds
the parser from the registry. To add one::

    def _status_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--node", ...)

    @subcommand("status", "show a node's state", _status_arguments)
    def status(args: argparse.Namespace) -> int:
        ...
        return 0
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Run = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    arguments: Arguments
    run: Run


SUBCOMMANDS: dict[str, Subcommand] = {}
"""The registry, in the order subcommands are listed in ``dropbear --help``."""


def subcommand(name: str, help: str, arguments: Arguments) -> Callable[[Run], Run]:
    """Registers ``run`` as ``dropbear <name>``."""

    def register(run: Run) -> Run:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name, help, arguments, run)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropbear", description="Trustworthy ML inference through Byzantine model agreement."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        command.arguments(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import dropbear.cli_group  # noqa: F401 - registers init, up, node, infer, verify, ...

    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


# --- train -----------------------------------------------------------------------------------


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, VALUE a TOML value: ``hidden=[128, 64]``, ``stem="small"``, ``width=16``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"option {text!r} is not KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value  # a bare word is a string


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from dropbear.inference.train import MIN_TEST_ACCURACY, RECIPES

    parser.add_argument(
        "name",
        help=f"model name; a known recipe ({', '.join(RECIPES)}) needs no other argument",
    )
    parser.add_argument("--models", default="models", help="model repository (default: models)")
    parser.add_argument("--architecture", help="zoo architecture (mlp, cnn, resnet, vit, ...)")
    parser.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option (TOML value), repeatable",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--shift", type=int, help="random pixel shift augmentation")
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=MIN_TEST_ACCURACY,
        help=f"refuse to write a model below this test accuracy (default {MIN_TEST_ACCURACY})",
    )
    parser.add_argument(
        "--keep-current",
        action="store_true",
        help="store the version without making it the current one",
    )


@subcommand(
    "train", "train a model on the digits data set and add it to the repository", _train_arguments
)
def train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from dropbear.inference import ModelRepository
    from dropbear.inference.train import RECIPES, Recipe, digits_config, train_digits

    recipe = RECIPES.get(args.name)
    if recipe is None and args.architecture is None:
        print(
            f"dropbear train: {args.name!r} has no recipe ({', '.join(RECIPES)}); "
            f"give --architecture",
            file=sys.stderr,
        )
        return 2
    if recipe is None or (args.architecture and args.architecture != recipe.architecture):
        recipe = Recipe(args.architecture, {})
    overrides = {
        k: v
        for k, v in {
            "seed": args.seed,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "shift": args.shift,
        }.items()
        if v is not None
    }
    recipe = replace(recipe, options={**recipe.options, **dict(args.option)}, **overrides)
    config = digits_config(args.name, recipe.architecture, recipe.options, recipe.description)

    with tqdm(total=recipe.epochs, desc=f"train {args.name}", unit="epoch") as bar:

        def on_epoch(epoch: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)

        result = train_digits(config, recipe, on_epoch=on_epoch)

    print(
        f"{args.name}: train accuracy {result.train_accuracy:.4f}, "
        f"test accuracy {result.test_accuracy:.4f} (450 test images)"
    )
    if result.test_accuracy < args.min_accuracy:
        print(
            f"dropbear train: test accuracy {result.test_accuracy:.4f} is below "
            f"--min-accuracy {args.min_accuracy}; nothing written",
            file=sys.stderr,
        )
        return 1
    version = ModelRepository(args.models).save(
        result.model, make_current=not args.keep_current, training=result.record
    )
    print(f"{args.name}: version {version} written to {args.models}/{args.name}/{version}/")
    return 0


if __name__ == "__main__":
    from dropbear.cli import main as registered_main  # the registry of the importable module

    sys.exit(registered_main())
