"""``parkguide`` console script: a table of subcommands, each in its component.

Every command module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
Only the module of the command being run is imported, so ``parkguide site
check`` does not pay for OpenCV or FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

# command words -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("site", "check"): ("parkguide.site_check", "validate a site file and print a summary"),
    ("site", "acl"): (
        "parkguide.site_acl",
        "write the broker ACL for a site file: each login its own topics of this site",
    ),
    ("site", "camera-view"): (
        "edge.camera.view",
        "draw a camera's space polygons and decisions over a frame (commissioning)",
    ),
    ("site", "bus-survey"): (
        "edge.survey",
        "read every node of one RS-485 bus against the site file (commissioning)",
    ),
    ("sim", "bus"): (
        "firmware_sim.bus",
        "simulate the node controllers of one RS-485 bus on a pty",
    ),
    ("sim", "camera"): (
        "firmware_sim.camera",
        "serve a synthetic MJPEG camera of one camera's spaces",
    ),
    ("sim", "display"): (
        "firmware_sim.display",
        "render every sign in the terminal as a driver sees it",
    ),
    ("sim", "drivers"): (
        "firmware_sim.drivers",
        "simulate drivers arriving, reading signs and parking",
    ),
    ("edge", "serial"): (
        "edge.serial_agent",
        "poll one RS-485 bus and publish occupancy over MQTT",
    ),
    ("edge", "camera"): ("edge.camera.cli", "classify one camera's spaces and publish occupancy"),
    ("eval", "camera"): (
        "edge.camera.evaluate",
        "measure the camera classifier on labelled photographs",
    ),
    ("gateway",): ("gateway.cli", "aggregate occupancy, allocate spaces, drive the signs"),
    ("api",): ("api.service", "serve the dashboard and REST API as its own process"),
    ("journal", "backup"): (
        "gateway.backup",
        "copy the gateway's journal (history, users, alerts) while it runs",
    ),
    ("journal", "forget-plate"): (
        "gateway.erasure",
        "erase one licence plate from the gateway's journal (a person's request)",
    ),
    ("user", "add"): ("api.users", "add a dashboard user to the journal database"),
    ("user", "remove"): ("api.users", "remove a dashboard user and end their sessions"),
    ("user", "list"): ("api.users", "list the dashboard users and their roles"),
    ("demo",): ("parkguide.demo", "run the whole example community on this machine"),
}
GROUP_HELP = {
    "site": "site files",
    "sim": "simulators for technicians and the demo",
    "edge": "edge agents",
    "eval": "measurements",
    "user": "dashboard users",
    "journal": "the gateway's journal",
}


def _overview_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parkguide", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (_module, helptext) in COMMANDS.items():
        if len(words) == 1:
            sub.add_parser(words[0], help=helptext, add_help=False)
            continue
        if words[0] not in groups:
            g = sub.add_parser(words[0], help=GROUP_HELP.get(words[0], ""))
            groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        groups[words[0]].add_parser(words[1], help=helptext, add_help=False)
    return parser


class CommandParser(argparse.ArgumentParser):
    """A command's parser that does not echo the values of arguments it does not know:
    ``--pass s3cr3t`` (a mistyped flag) printed the secret to the terminal and the journal."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error("unrecognized arguments: " + " ".join(_masked_values(unknown)))
        return parsed

    def error(self, message: str):  # type: ignore[no-untyped-def, override]
        # "-hunter2" reads as -h with an argument: argparse quotes the rest of it
        super().error(_EXPLICIT.sub("explicit argument '***'", message))


_EXPLICIT = re.compile(r"explicit argument '.*'", re.S)


_FLAG_NAME = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*")


def _masked_values(words: list[str]) -> list[str]:
    """Flag names kept (``--x=V`` as ``--x=***``), every other word that follows a flag as
    ``***`` (a value may start with "-" or hold spaces), a stray word before any flag kept."""
    out = []
    after_flag = False
    for word in words:
        name, eq, _value = word.partition("=")
        if _FLAG_NAME.fullmatch(name) and not (
            after_flag and word.startswith("-") and not word.startswith("--")
        ):
            out.append(f"{name}=***" if eq else word)
            after_flag = not eq
        elif after_flag:
            out.append("***")
            after_flag = False
        else:
            out.append(word)
    return out


def _find(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for n in (2, 1):
        words = tuple(argv[:n])
        if len(words) == n and words in COMMANDS:
            return words, argv[n:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("PARKGUIDE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    found = _find(argv)
    if found is None:
        parser = _overview_parser()
        if not argv or argv[0] in {"-h", "--help"}:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # prints the usage error for an unknown command
        parser.print_help()
        return 2
    words, rest = found
    module_name, helptext = COMMANDS[words]
    module = importlib.import_module(module_name)
    # no abbreviations: "--password X" must not pass as "--password-env X" (nor any flag
    # as a longer one added later)
    parser = CommandParser(
        prog="parkguide " + " ".join(words), description=helptext, allow_abbrev=False
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        return 130
