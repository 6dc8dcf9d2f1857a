"""What changed in the site file since the gateway last ran: pure logic, no I/O.

The gateway journals an *outline* of the site it runs (ids of zones and displays, and
each space's zone, source and site-file closure). At the next start it compares the
outline with the file it is given, says what changed, retires the retained topics the
file no longer has, and applies closures the file added or removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parking import topics

if TYPE_CHECKING:
    from parking.site import Site

OUTLINE_KEY = "site_outline"
"""journal meta key of the outline of the site the gateway last started with."""
DIGEST_KEY = "site_digest"
"""journal meta key of that site's digest (``Site.digest``), for the API to compare."""
SITE_ID_KEY = "site_id"
"""journal meta key of that site's id."""
SITE_FILE_BY = "site file"
"""who a closure applied from the site file is journaled as (an event's agent)."""


def outline(site: Site) -> dict[str, Any]:
    """The parts of a site whose change matters to a journal that outlives the file."""
    return {
        "site": site.id,
        "zones": [z.id for z in site.zones],
        "displays": [d.id for d in site.displays],
        "spaces": {
            s.id: [
                s.zone,
                site.bindings[s.id].source if s.id in site.bindings else None,
                s.closed,
            ]
            for s in site.spaces
        },
    }


def parse_outline(text: str | None) -> dict[str, Any] | None:
    """The stored outline, or None when there is none (a journal older than outlines) or it
    cannot be read (then nothing is compared: the file is taken as it is)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not (
        isinstance(data, dict)
        and isinstance(data.get("site"), str)
        and isinstance(data.get("zones"), list)
        and isinstance(data.get("displays"), list)
        and isinstance(data.get("spaces"), dict)
    ):
        return None
    return data


@dataclass
class SiteChanges:
    """The difference between the stored outline and the site file now given."""

    renamed_from: str | None = None  # the journal was made for another site id
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    moved_zone: dict[str, tuple[str, str]] = field(default_factory=dict)
    moved_source: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    zones_removed: list[str] = field(default_factory=list)
    displays_removed: list[str] = field(default_factory=list)
    closed_by_file: list[str] = field(default_factory=list)  # the file closes them now
    opened_by_file: list[str] = field(default_factory=list)  # the file no longer closes them
    retired_topics: list[str] = field(default_factory=list)  # retained, nobody keeps them now

    def __bool__(self) -> bool:
        return any(
            (
                self.renamed_from,
                self.added,
                self.removed,
                self.moved_zone,
                self.moved_source,
                self.zones_removed,
                self.displays_removed,
                self.closed_by_file,
                self.opened_by_file,
            )
        )

    def lines(self, show: int = 8) -> list[str]:
        """One line per kind of change, for the log and ``site check --db``."""

        def ids(items: list[str] | dict[str, Any]) -> str:
            names = list(items)
            more = f" and {len(names) - show} more" if len(names) > show else ""
            return ", ".join(names[:show]) + more

        out = []
        if self.renamed_from:
            out.append(
                f"site id changed from {self.renamed_from!r}: the gateway takes this journal"
                f" over only when started with --rename-site-from {self.renamed_from} (else"
                " it refuses it: a journal of another site); every agent, display and client"
                " must then use the new id's topics"
            )
        if self.added:
            out.append(f"{len(self.added)} spaces added (unknown until heard): {ids(self.added)}")
        if self.removed:
            out.append(
                f"{len(self.removed)} spaces removed (their state is dropped, their history"
                f" kept): {ids(self.removed)}"
            )
        if self.moved_zone:
            moves = {f"{s} {a}->{b}": 0 for s, (a, b) in self.moved_zone.items()}
            out.append(f"{len(self.moved_zone)} spaces moved to another zone: {ids(moves)}")
        if self.moved_source:
            moves = {f"{s} {a}->{b}": 0 for s, (a, b) in self.moved_source.items()}
            out.append(
                f"{len(self.moved_source)} spaces moved to another source (unknown until"
                f" it reports them): {ids(moves)}"
            )
        if self.zones_removed:
            out.append(f"zones removed: {ids(self.zones_removed)}")
        if self.displays_removed:
            out.append(f"displays removed: {ids(self.displays_removed)}")
        if self.closed_by_file:
            out.append(f"closed by the site file now: {ids(self.closed_by_file)}")
        if self.opened_by_file:
            out.append(f"no longer closed by the site file: {ids(self.opened_by_file)}")
        return out


def compare(
    old: dict[str, Any] | None, site: Site, new: dict[str, Any] | None = None
) -> SiteChanges:
    """What changed from the stored outline ``old`` to ``site`` (whose outline is ``new``,
    when the caller has it already); nothing when ``old`` is None."""
    changes = SiteChanges()
    if old is None:
        return changes
    if new is None:
        new = outline(site)
    if old["site"] != new["site"]:
        changes.renamed_from = old["site"]
    before: dict[str, Any] = old["spaces"]
    now: dict[str, Any] = new["spaces"]
    changes.added = [s for s in now if s not in before]
    changes.removed = [s for s in before if s not in now]
    for s, (zone, source, closed) in now.items():
        was = before.get(s)
        if not isinstance(was, list) or len(was) != 3:
            continue
        if was[0] != zone:
            changes.moved_zone[s] = (was[0], zone)
        if was[1] != source:
            changes.moved_source[s] = (was[1], source)
        if closed and not was[2]:
            changes.closed_by_file.append(s)
        elif was[2] and not closed:
            changes.opened_by_file.append(s)
    changes.zones_removed = [z for z in old["zones"] if z not in new["zones"]]
    changes.displays_removed = [d for d in old["displays"] if d not in new["displays"]]
    kept = {topics.zone(site.id, z) for z in new["zones"]} | {
        topics.display_content(site.id, d) for d in new["displays"]
    }
    retained = [topics.zone(old["site"], z) for z in old["zones"]] + [
        topics.display_content(old["site"], d) for d in old["displays"]
    ]
    changes.retired_topics = [t for t in retained if t not in kept]
    return changes
