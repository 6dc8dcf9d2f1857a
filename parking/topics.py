"""The MQTT topic contract, in one place (DESIGN.md, "Wire contracts").

Every topic lives under ``parkguide/v1/{site}/``. Accepted forms::

    parkguide/v1/{site}/edge/{agent}/availability      online|offline, retained (LWT)
    parkguide/v1/{site}/edge/{agent}/occupancy         OccupancyReport, QoS 1
    parkguide/v1/{site}/edge/{agent}/health            HealthReport, QoS 0, retained
    parkguide/v1/{site}/zones/{zone}                   ZoneCounts, retained
    parkguide/v1/{site}/displays/{display}/content     DisplayContent, retained
    parkguide/v1/{site}/entrances/{entrance}/arrival   Arrival
    parkguide/v1/{site}/entrances/{entrance}/assignment Assignment
    parkguide/v1/{site}/entrances/{entrance}/refusal   ArrivalRefusal (an arrival or cancel not taken)
    parkguide/v1/{site}/entrances/{entrance}/cancel    ArrivalCancel (a gate takes an arrival back)
    parkguide/v1/{site}/gateway/availability           online|offline, retained (LWT)
    parkguide/v1/{site}/control/spaces/{space}         SpaceControl (manager closes/opens), QoS 1
    parkguide/v1/{site}/control/zones/{zone}           SpaceControl (a whole zone), QoS 1
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "parkguide/v1"
ONLINE = "online"
OFFLINE = "offline"

# (QoS, retain) per message kind, so publishers never guess.
QOS_AVAILABILITY, RETAIN_AVAILABILITY = 1, True
QOS_OCCUPANCY, RETAIN_OCCUPANCY = 1, False
QOS_HEALTH, RETAIN_HEALTH = 0, True
QOS_ZONE, RETAIN_ZONE = 1, True
QOS_DISPLAY, RETAIN_DISPLAY = 1, True
QOS_ARRIVAL, RETAIN_ARRIVAL = 1, False
QOS_ASSIGNMENT, RETAIN_ASSIGNMENT = 1, False
QOS_REFUSAL, RETAIN_REFUSAL = 1, False
QOS_CANCEL, RETAIN_CANCEL = 1, False


def site_prefix(site: str) -> str:
    return f"{PREFIX}/{site}"


def edge_availability(site: str, agent: str) -> str:
    return f"{PREFIX}/{site}/edge/{agent}/availability"


def edge_occupancy(site: str, agent: str) -> str:
    return f"{PREFIX}/{site}/edge/{agent}/occupancy"


def edge_health(site: str, agent: str) -> str:
    return f"{PREFIX}/{site}/edge/{agent}/health"


def zone(site: str, zone_id: str) -> str:
    return f"{PREFIX}/{site}/zones/{zone_id}"


DISPLAY_CONTENT_SUFFIX = "/content"


def display_content(site: str, display: str) -> str:
    return f"{PREFIX}/{site}/displays/{display}{DISPLAY_CONTENT_SUFFIX}"


def is_display_content(topic: str) -> bool:
    """A sign's content topic (cheap: the gateway asks for every message it publishes)."""
    return topic.endswith(DISPLAY_CONTENT_SUFFIX) and "/displays/" in topic


def arrival(site: str, entrance: str) -> str:
    return f"{PREFIX}/{site}/entrances/{entrance}/arrival"


def assignment(site: str, entrance: str) -> str:
    return f"{PREFIX}/{site}/entrances/{entrance}/assignment"


def arrival_refusal(site: str, entrance: str) -> str:
    return f"{PREFIX}/{site}/entrances/{entrance}/refusal"


def arrival_cancel(site: str, entrance: str) -> str:
    return f"{PREFIX}/{site}/entrances/{entrance}/cancel"


def gateway_availability(site: str) -> str:
    return f"{PREFIX}/{site}/gateway/availability"


# Subscription filters used by the gateway, the API and the simulated gates.
def edge_all(site: str) -> str:
    return f"{PREFIX}/{site}/edge/+/+"


def arrivals_all(site: str) -> str:
    return f"{PREFIX}/{site}/entrances/+/arrival"


def cancels_all(site: str) -> str:
    return f"{PREFIX}/{site}/entrances/+/cancel"


def assignments_all(site: str) -> str:
    return f"{PREFIX}/{site}/entrances/+/assignment"


def refusals_all(site: str) -> str:
    return f"{PREFIX}/{site}/entrances/+/refusal"


def zones_all(site: str) -> str:
    return f"{PREFIX}/{site}/zones/+"


def displays_all(site: str) -> str:
    return f"{PREFIX}/{site}/displays/+/content"


@dataclass(frozen=True)
class ParsedTopic:
    """A topic split into its parts: kind is e.g. 'edge/occupancy', 'zones', 'displays/content'."""

    site: str
    kind: str
    ident: str


_EDGE_LEAVES = {"availability", "occupancy", "health"}


def parse(topic: str) -> ParsedTopic | None:
    """Split a parkguide topic; None for anything that is not one of the accepted forms."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    site, rest = parts[2], parts[3:]
    if len(rest) == 3 and rest[0] == "edge" and rest[2] in _EDGE_LEAVES and rest[1]:
        return ParsedTopic(site, f"edge/{rest[2]}", rest[1])
    if len(rest) == 2 and rest[0] == "zones" and rest[1]:
        return ParsedTopic(site, "zones", rest[1])
    if len(rest) == 3 and rest[0] == "displays" and rest[2] == "content" and rest[1]:
        return ParsedTopic(site, "displays/content", rest[1])
    if (
        len(rest) == 3
        and rest[0] == "entrances"
        and rest[2] in {"arrival", "assignment", "refusal", "cancel"}
        and rest[1]
    ):
        return ParsedTopic(site, f"entrances/{rest[2]}", rest[1])
    if len(rest) == 3 and rest[0] == "control" and rest[1] == "spaces" and rest[2]:
        return ParsedTopic(site, "control/spaces", rest[2])
    if len(rest) == 3 and rest[0] == "control" and rest[1] == "zones" and rest[2]:
        return ParsedTopic(site, "control/zones", rest[2])
    if rest == ["gateway", "availability"]:
        return ParsedTopic(site, "gateway/availability", "gateway")
    return None


def space_control(site: str, space: str) -> str:
    """Manager actions on a space (close/open), from the API to the gateway. QoS 1, not retained."""
    return f"{PREFIX}/{site}/control/spaces/{space}"


def space_control_all(site: str) -> str:
    return f"{PREFIX}/{site}/control/spaces/+"


def zone_control(site: str, zone_id: str) -> str:
    """Manager actions on a whole zone (close/open), from the API to the gateway; the
    payload is a SpaceControl. QoS 1, not retained."""
    return f"{PREFIX}/{site}/control/zones/{zone_id}"


def zone_control_all(site: str) -> str:
    return f"{PREFIX}/{site}/control/zones/+"


QOS_CONTROL, RETAIN_CONTROL = 1, False

RETAINED_KINDS = frozenset(
    kind
    for kind, retained in (
        ("edge/availability", RETAIN_AVAILABILITY),
        ("edge/occupancy", RETAIN_OCCUPANCY),
        ("edge/health", RETAIN_HEALTH),
        ("zones", RETAIN_ZONE),
        ("displays/content", RETAIN_DISPLAY),
        ("entrances/arrival", RETAIN_ARRIVAL),
        ("entrances/assignment", RETAIN_ASSIGNMENT),
        ("entrances/refusal", RETAIN_REFUSAL),
        ("entrances/cancel", RETAIN_CANCEL),
        ("control/spaces", RETAIN_CONTROL),
        ("control/zones", RETAIN_CONTROL),
        ("gateway/availability", RETAIN_AVAILABILITY),
    )
    if retained
)
"""Kinds (ParsedTopic.kind) the contract publishes retained; a retained message of any
other kind is stale by nature (an old report, arrival or close replayed to every new
subscriber) and is refused."""
