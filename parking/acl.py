"""A Mosquitto ACL made from one site file: every login's topics written out whole, with
the site's id in them, instead of the shipped ACL's patterns.

The shipped ``deploy/mosquitto/parkguide.acl`` uses ``pattern`` lines, which apply to
every login: a sign's login may then write ``edge/<its name>/…`` too, under any site id,
and keep as many retained messages there as it likes. Here each agent, gate and sign gets
its own ``user`` block and nothing else, so a login reaches its own few topics of its own
site only. Topics come from :mod:`parking.topics`.
"""

from __future__ import annotations

from parking import topics
from parking.site import Site

HEADER = """\
# parkguide MQTT ACL for site {site}, made by `parkguide site acl` from its site file.
# Every login gets its own topics of this site only (no patterns): an agent writes its
# own reports, a gate its own arrivals, a sign reads its own content. Make it again
# after adding an agent, an entrance or a sign to the site file.
"""


def _agents(site: Site) -> list[str]:
    """The site's agent ids (its buses' and cameras'), each once, sorted."""
    return sorted({b.agent for b in site.buses} | {c.agent for c in site.cameras})


def _block(user: str, rules: list[tuple[str, str]]) -> list[str]:
    return ["", f"user {user}", *(f"topic {access} {topic}" for access, topic in rules)]


def site_acl(site: Site, gateway: str = "gateway", api: str = "api", shared: bool = False) -> str:
    """The ACL text for ``site``: role logins ``gateway`` and ``api``, one login per agent
    (its agent id), per entrance (its id) and per sign (its display id); with ``shared``
    also the shared ``gate`` and ``signs`` logins of earlier releases."""
    s = site.id
    up = ("read", topics.gateway_availability(s))
    lines = [HEADER.format(site=s).rstrip("\n")]
    lines += _block(
        gateway,
        [
            ("read", f"{topics.site_prefix(s)}/edge/#"),
            ("read", topics.arrivals_all(s)),
            ("read", topics.cancels_all(s)),
            ("read", topics.space_control_all(s)),
            ("read", topics.zone_control_all(s)),
            ("readwrite", topics.zones_all(s)),
            ("readwrite", topics.displays_all(s)),
            ("write", topics.assignments_all(s)),
            ("write", topics.refusals_all(s)),
            ("readwrite", topics.gateway_availability(s)),
        ],
    )
    lines += _block(
        api,
        [
            ("read", topics.zones_all(s)),
            ("read", topics.displays_all(s)),
            ("read", topics.edge_availability(s, "+")),
            ("read", topics.edge_health(s, "+")),
            ("read", topics.assignments_all(s)),
            ("read", topics.refusals_all(s)),
            up,
            ("write", topics.space_control_all(s)),
            ("write", topics.zone_control_all(s)),
        ],
    )
    for agent in _agents(site):
        lines += _block(
            agent,
            [
                ("write", topics.edge_availability(s, agent)),
                ("write", topics.edge_occupancy(s, agent)),
                ("write", topics.edge_health(s, agent)),
                ("read", topics.edge_availability(s, agent)),
                up,
            ],
        )
    for entrance in site.entrances:
        e = entrance.id
        lines += _block(
            e,
            [
                ("write", topics.arrival(s, e)),
                ("write", topics.arrival_cancel(s, e)),
                ("read", topics.assignment(s, e)),
                ("read", topics.arrival_refusal(s, e)),
                up,
            ],
        )
    for display in site.displays:
        lines += _block(display.id, [("read", topics.display_content(s, display.id)), up])
    if shared:
        lines += _block(
            "gate",
            [
                ("write", topics.arrivals_all(s)),
                ("write", topics.cancels_all(s)),
                ("read", topics.assignments_all(s)),
                ("read", topics.refusals_all(s)),
                up,
            ],
        )
        lines += _block("signs", [("read", topics.displays_all(s)), up])
    return "\n".join(lines) + "\n"


def acl_logins(site: Site, gateway: str = "gateway", api: str = "api") -> list[str]:
    """The logins :func:`site_acl` names, in its order (for ``make-passwords.sh``)."""
    return [
        gateway,
        api,
        *_agents(site),
        *(e.id for e in site.entrances),
        *(d.id for d in site.displays),
    ]
