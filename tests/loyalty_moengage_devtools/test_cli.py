"""The development commands live in the devtools' CLI; the product's CLI has only the product's."""

from __future__ import annotations

import argparse

DEV_COMMANDS = {"demo", "generate", "sandbox", "bench", "bench-api"}
PRODUCT_COMMANDS = {"db", "run", "plan", "resend", "resolve", "api", "presence"}


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def test_each_cli_has_its_own_commands():
    from loyalty_moengage import cli as product
    from loyalty_moengage_devtools import cli as dev

    assert _commands(product.build_parser()) == PRODUCT_COMMANDS
    assert _commands(dev.build_parser()) == DEV_COMMANDS
    demo = dev.build_parser().parse_args(["demo", "--members", "50", "--keep"])
    assert (demo.func, demo.members, demo.keep, demo.days) == (dev.cmd_demo, 50, True, 60)
