"""Render the site file reference (docs/site-file.md) from the pydantic schema.

The schema in ``parking.siteconfig`` is the one place the site file's keys are
defined; this turns its field titles, types, defaults and descriptions into
Markdown so the documentation cannot drift from the code
(``python -m parking.sitedoc > docs/site-file.md``; a test checks it).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from parking import siteconfig as cfg
from parking.payloads import IDENTIFIER_PATTERN

INTRO = """# Site file reference

One YAML file describes a site: its levels, zones, spaces and their kinds,
the map geometry, which sensor watches which space, the lanes cars drive,
the gates, the signs and the time-window policies. `parkguide site check FILE`
validates it; every error names the file, the line and the field. Unknown keys
are errors. Ranges such as `A-001..A-040` stand for every id between (same
prefix, same digit width). The example: `examples/site.yaml`.

This page is generated from `parking/siteconfig.py` by `python -m parking.sitedoc`.

## Ids

Every id, and every reference to one, is of ASCII letters, digits and `_ . : -` only,
1 to 64 characters (`A-001`, `B1`, `bus-1`, `ev`): the ids of the site, levels, zones,
kinds, vehicle classes, policies, spaces, lane nodes, entrances, buses, cameras, agents
and displays name MQTT topics and API paths, where `/`, `+`, `#`, blanks or Chinese would
break them. Space ids are checked once ranges are expanded (`A-001..A-040` is `A-001`,
`A-002`, ... `A-040`). Chinese goes in a `name` (`zh`) of the site, a level, zone,
vehicle class, entrance or display, or a sign line's `label`. A space has no name: give
it an id such as `A-001` and its zone the Chinese name (`A区（业主）`).

Quote an id that YAML would read as something else than text: a number (`id: '1'`,
`ids: ['101', '102']`, `'12:30'`) or a true/false word (`yes`, `no`, `on`, `off`,
`true`, `false`: `id: 'no'`, `kinds: ['on']`). Unquoted, `site check` refuses it
and says what to quote.
"""

CHECKS = """## Cross-checks

Beyond the types above, a site is refused when: an id is defined twice (levels,
zones, kinds, classes, policies, lane nodes, entrances, displays, spaces); a zone,
level, kind, class, lane node or entrance is referenced but not defined; a row's
`access` node is on another level than the row's zone; a space is bound to
two sensors; a detector is bound twice; a node controller has more than 64
detectors; two nodes on one bus share an address; a bus and a camera share an
id; an edge joins two levels without a length (a path `[a, b]` has none: write
such an edge as `{from: a, to: b, length: ...}`); a camera polygon leaves the
frame; a range is malformed; a space id (of a range too) is not an [id](#ids).

`site check` warns, without refusing the site, about spaces without a sensor and,
as the gateway's log at its start does too, about spaces no entrance reaches over
the lanes, an entrance that reaches no space, a sign line at an entrance that counts
spaces a car from that entrance cannot reach (another entrance can: the line counts
them all the same), a zone without spaces and a sign line that counts no space (its
zones have none, or none its vehicle class may use): such a line reads `满 FULL` for
good.

## Editing the file of a running site

`parkguide site check FILE --db JOURNAL` lists what the gateway will find changed
against the file it last ran with; at its next start the gateway logs the same list
and acts on it:

- a space added is `unknown` until its source reports it; a space removed loses its
  current state (its history stays); a space moved to another zone counts there from
  the start on, and its past events keep the zone of their time (`/events`, CSV,
  `/history`);
- `closed: true` added closes the space, taken out opens it, each journaled as done
  by "site file" with the reason; a manager's own closure or opening stands;
- the retained `zones/{zone}` and `displays/{display}/content` topics of a zone or
  display the file no longer has are cleared (all of them when the site `id`
  changes: every agent, sign and client must then use the new id's topics);
- agents keep working with the file they were started with until restarted: give
  every box the new file (a health report naming a space under another detector
  or node than the gateway's file is refused as `foreign_space`), and the API the
  same file as the gateway (otherwise a `site_mismatch` alert, and closing or
  opening spaces answers 409).
"""


def _is_id(metadata: Any) -> bool:
    """Whether pydantic constraints are those of an id (parking.payloads.Identifier)."""
    for m in metadata:
        if getattr(m, "pattern", None) == IDENTIFIER_PATTERN:
            return True
        if _is_id(getattr(m, "metadata", ())):  # a FieldInfo of Annotated[str, Field(...)]
            return True
    return False


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp == cfg.SpaceRef:
        return "[id](#ids)/range"
    if origin is typing.Annotated:
        return "[id](#ids)" if _is_id(args[1:]) else _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for f in model.model_fields.values():
            for tp in _walk(f.annotation):
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    visit(tp)

    visit(cfg.SiteFile)
    return seen


def _walk(tp: Any):
    yield tp
    for a in typing.get_args(tp):
        yield from _walk(a)


def render() -> str:
    out = [INTRO]
    for model in _models():
        out.append(f"## {model.__name__}\n")
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("!!!", "Usage docs")):
            out.append(doc.splitlines()[0] + "\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, f in model.model_fields.items():
            key = f.alias or name
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "(empty)" if f.default_factory in (list, dict) else "(see type)"
            elif f.default is PydanticUndefined or f.default is None:
                default = "none"
            else:
                default = f"`{f.default}`"
            meaning = (f.description or "").replace("|", "\\|")
            kind = "[id](#ids)" if _is_id(f.metadata) else _type_name(f.annotation)
            out.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        out.append("")
    out.append(CHECKS)
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
