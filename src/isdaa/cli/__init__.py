"""The `isdaa` command: one click group; each subcommand lives in the module named for it."""

from __future__ import annotations

import click

from isdaa import __version__


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (fast `--help`, no heavy imports)."""

    _commands = {
        "bandit": ("isdaa.cli.analysis", "bandit"),
        "toy": ("isdaa.cli.analysis", "toy"),
        "train": ("isdaa.cli.train", "train"),
        "eval": ("isdaa.cli.eval", "eval_cmd"),
        "label": ("isdaa.cli.eval", "label"),
        "judge": ("isdaa.cli.eval", "judge"),
        "lab": ("isdaa.cli.lab", "lab"),
        "merge": ("isdaa.cli.merge", "merge"),
    }

    def list_commands(self, ctx):
        return sorted(self._commands)

    def get_command(self, ctx, name):
        if name not in self._commands:
            return None
        import importlib

        module, attr = self._commands[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="isdaa")
def main():
    """isdaa: DPO, IPO, RPO, chi-PO, R-DPO and their importance-sampled variants (IS-DAAs)."""


if __name__ == "__main__":
    main()
