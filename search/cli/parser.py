"""The ``resnet-search`` argument parser, built from the conventions tables of
:mod:`search.cli.flags`: one sub-parser per command, each flag added from its one definition."""

from __future__ import annotations

import argparse

from search._version import __version__
from search.cli.commands import HANDLERS
from search.cli.flags import COMMANDS, FLAGS, flag_help

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is under --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resnet-search",
        description="Search ResNet architectures and training recipes under a hard parameter budget.",
    )
    parser.add_argument("--version", action="version", version=f"resnet-search {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        for argument, text, nargs in command.arguments:
            sub.add_argument(argument, help=text, nargs=nargs)
        for flag in command.flags:
            definition = FLAGS[flag]
            sub.add_argument(flag, default=definition.default, help=flag_help(name, flag), **definition.options)
        sub.set_defaults(handler=HANDLERS[name])
    return parser
