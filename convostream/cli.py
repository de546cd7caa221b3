"""The ``convostream`` command line: one entry point for every component.

Sub-commands import their component lazily so that ``convostream tail`` does not pay for Faust
and ``--help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

# name -> ("module:attribute" of a click.Command, one-line help shown by ``convostream --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("convostream.broker_cli:broker", "Run the embedded Kafka-compatible broker."),
    "simulate": ("simulator.cli:simulate", "Run the upstream simulator (monitor sockets + REST)."),
    "tail": ("convostream.tail:tail", "Print decoded records of a topic as JSON lines."),
    "demo": ("convostream.demo:demo", "Run the whole pipeline on this machine."),
    "command-worker": (
        "commands.cli:command_worker",
        "Deliver commands from convai.commands upstream; write their results.",
    ),
    "send-command": (
        "commands.cli:send_command",
        "Sign and send one command, wait for its result.",
    ),
    "collect": ("ingest.cli:collect", "Discover live conversations and monitor them into Kafka."),
    "rules": (
        "rules.cli:rules",
        "The rules engine: live conditions to signed commands and alerts (rules check FILE).",
    ),
    "process": (
        "processors.cli:process",
        "Compute conversation metrics and agent windows; write SQL and metrics topics.",
    ),
    "webhooks": (
        "postcall.cli:webhooks",
        "Receive signed post-call webhooks; backfill gaps from transcripts.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr = entry[0].split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convostream")
def main() -> None:
    """convostream: ElevenLabs Agents monitoring streams into Kafka, metrics and commands.

    Every option can also be set by an environment variable (shown in each command's --help)
    or in a .env file in the working directory.
    """
