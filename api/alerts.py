"""Alerts derived from live state, and their episodes and acknowledgements.

``derive_alerts`` is pure: the gateway offline (its last will, seen by a stand-alone API),
agents offline or never seen, or shut out by another boot under their id (their live
reports refused: ``agent_boot_conflict``), cameras blind, buses blind (no node answers, or
the serial port is lost), nodes dead, answering with a Modbus exception or unreliably (CRC errors,
timeouts), detectors stuck, flapping or faulty or with a low battery, spaces occupied for too long.
``site_mismatch_alert`` says the gateway runs another site file (``api.sitecheck``);
``influx_failing_alert`` that its InfluxDB writer cannot write (``api.outbox_status``);
``journal_disk_alert`` that the journal's disk is nearly full (``api.disk_status``). The
``AlertBook`` keeps one row per alert in the journal database's ``alerts``
table: when the current (or last) episode began, when it cleared, who acknowledged it, and
how many episodes came in a row. An acknowledgement carries over to an episode that begins
within ACK_CARRY_S of the last one's clear (a flapping detector is one job for the
technician, not one a flap); after a quiet day the alert must be acknowledged again. The
book counts the episodes it raises per kind (``raised_total``, for /metrics), and lists the
alerts whose last episode cleared since a time (``cleared_since``). The book logs each episode once when it opens (WARNING
for critical and warning alerts, INFO for the rest) and once when it clears (INFO).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.readside import AgentStatus, EntranceRefusals, SpaceStatus
from parking.registers import BATTERY_LOW_PERCENT
from parking.site import Site

log = logging.getLogger(__name__)

AGENT_REJOIN_S = 35.0
"""After the broker comes back, how long an agent may take to reconnect (the agents' backoff
is capped at 30 s) before its retained last will counts as offline."""

NEVER_SEEN_GRACE_S = 60.0
"""How long after the view could first hear every agent (the API or gateway started and
reached the broker) an agent of the site file not heard from at all is an alert
(``agent_never_seen``): its retained availability, if it ever connected, comes at once."""

ACK_CARRY_S = 24 * 3600.0
"""An acknowledgement (and its note) carries over to a new episode of the same alert that
begins within this long after the last one cleared: a flapping detector or a node that drops
out now and then comes back many times a day, and what the manager did about it
("technician ordered") holds until the fault is mended; a day is the usual wait for the
technician, and an alert quiet for a day and back is news worth acknowledging again. The
episodes in a row are counted (``AlertRecord.episodes``) so the page says it keeps coming."""

ACK_CARRY_KINDS = frozenset({
    "broker_lost", "gateway_offline", "agent_offline", "agent_never_seen", "node_dead",
    "node_unreliable", "spool_full", "detector_stuck", "detector_flapping", "battery_low",
    "journal_disk_low",
})  # fmt: skip
"""The kinds whose id names one fault, so a new episode is the same fault back. The others
ask anew every episode: their id covers several causes (``bus_blind``: the port lost, or no
node answers; ``node_error``: an exception, or another bus's node; ``camera_blind``,
``detector_fault``, ``arrivals_refused``: by what they see; ``site_mismatch``, ``influx_failing``,
``agent_boot_conflict``: what is wrong differs), or each episode is a new fact
(``long_occupied``: another car), and an old acknowledgement would grey out a new cause."""

ALERTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    since REAL NOT NULL,
    cleared REAL,
    acked_by TEXT,
    acked_at REAL,
    note TEXT,
    episodes INTEGER NOT NULL DEFAULT 1
)
"""
_EPISODES_COLUMN = "ALTER TABLE alerts ADD COLUMN episodes INTEGER NOT NULL DEFAULT 1"
"""A journal whose table predates the count: its rows count from 1."""

SEVERITY = {
    "site_mismatch": "critical",
    # critical while InfluxDB refuses the token (subject ``token``); a warning when writes
    # fail for another reason (subject ``write``): see Alert.severity
    "influx_failing": "critical",
    # warning below PARKGUIDE_JOURNAL_DISK_LOW_MB, critical below a quarter of it (subject
    # ``critical``): one episode each, so an acknowledged warning does not hide the worse
    "journal_disk_low": "warning",
    "broker_lost": "critical",
    "gateway_offline": "critical",
    "agent_offline": "critical",
    "agent_never_seen": "critical",
    "agent_boot_conflict": "critical",
    "camera_blind": "critical",
    "bus_blind": "critical",
    "node_dead": "critical",
    "node_error": "critical",
    "node_unreliable": "warning",
    "spool_full": "warning",
    "detector_stuck": "warning",
    "detector_flapping": "warning",
    "detector_fault": "warning",
    "battery_low": "warning",
    "arrivals_refused": "warning",
    "long_occupied": "info",
}

AGENT_KINDS = frozenset(SEVERITY) - {
    "site_mismatch",
    "influx_failing",
    "journal_disk_low",
    "broker_lost",
    "long_occupied",
}
"""Alerts derived from what the agents (and the gateway) say in their retained availability
and health: kept open while the view settles (AlertBook.update's ``keep_open``)."""

_TEXT = {
    "site_mismatch": (
        "本 API 的站点文件(站点 {subject})不是网关的:请用网关的站点文件启动 API",
        "this API's site file (site {subject}) is not the gateway's: "
        "start the API with the gateway's site file",
    ),
    "influx_failing": (
        "网关写入 InfluxDB 失败({subject}):历史数据暂存在日志数据库的发件箱中,详见网关日志",
        "the gateway cannot write to InfluxDB ({subject}): history waits in the journal's "
        "outbox; see the gateway's log",
    ),
    "broker_lost": (
        "与 MQTT 代理 {subject} 的连接已断开(或代理拒绝本服务的登录):各边缘代理和车位的状态未知;"
        "请检查代理服务及其日志,以及本服务环境文件中的登录信息",
        "the MQTT broker {subject} is not reachable, or refuses this service's login: agents"
        " and spaces are unknown until it is; check the broker service and its log, and the"
        " login in this service's environment file",
    ),
    "gateway_offline": (
        "网关(站点 {subject})离线:所有车位和区域显示未知,引导屏将熄灭;请检查网关进程及其日志",
        "the gateway (site {subject}) is offline: every space and zone shows unknown and the "
        "signs blank; check the gateway's process and its log",
    ),
    "agent_offline": ("边缘代理 {subject} 离线", "edge agent {subject} is offline"),
    "agent_never_seen": (
        "边缘代理 {subject} 从未连接:未启动,或其 MQTT 地址、凭据有误?",
        "edge agent {subject} has never been heard from: not started, or a wrong broker "
        "address or credentials?",
    ),
    "agent_boot_conflict": (
        "边缘代理 {subject} 的报告被网关拒绝(另一个启动标识取代了它):请重启该代理;"
        "如果没有人重启过它,它的 MQTT 登录可能被盗用:请更改其密码",
        "edge agent {subject}'s reports are refused by the gateway (another boot replaced"
        " its own): restart the agent; if nobody restarted it, its broker login may be"
        " stolen: change its password",
    ),
    "camera_blind": ("摄像头 {subject} 看不见", "camera {subject} is blind"),
    "bus_blind": (
        "总线 {subject}:没有节点应答(串口断开?)",
        "bus {subject}: no node answers (serial port lost?)",
    ),
    "node_dead": (
        "节点 {subject} 无应答:请检查节点的电源和总线电缆",
        "node controller {subject} does not answer: check the node's power and bus cable",
    ),
    "node_error": (
        "节点 {subject} 回应 Modbus 异常",
        "node controller {subject} answers with a Modbus exception",
    ),
    "node_unreliable": (
        "节点 {subject} 通信不稳定(CRC 错误、超时):请检查接线和终端电阻",
        "node controller {subject} answers unreliably (CRC errors, timeouts): "
        "check wiring and termination",
    ),
    "spool_full": (
        "边缘代理 {subject} 无法写入报告缓存(磁盘已满?):代理断线期间的报告会丢失",
        "edge agent {subject} cannot write its report spool (disk full?): "
        "reports are lost if it loses the broker",
    ),
    "detector_stuck": (
        "检测器 {subject} 卡住:请检查或更换检测器",
        "detector {subject} is stuck: check or replace the detector",
    ),
    "detector_flapping": (
        "检测器 {subject} 抖动:请检查或更换检测器",
        "detector {subject} is flapping: check or replace the detector",
    ),
    "detector_fault": (
        "检测器 {subject} 故障:请检查或更换检测器",
        "detector {subject} has a fault: check or replace the detector",
    ),
    "arrivals_refused": (
        "入口 {subject} 的到达请求被网关拒绝:那里的车辆得不到车位分配;请检查道闸控制器",
        "arrivals at entrance {subject} are refused by the gateway: cars there get no space;"
        " check its gate controller",
    ),
    "battery_low": (
        "检测器 {subject} 电池电量低:请在其失效(车位变为未知)前更换",
        "detector {subject}'s battery is low: replace it before it dies (its space turns unknown)",
    ),
    "journal_disk_low": (  # details not kept across a restart: until derived again
        "网关日志数据库所在磁盘剩余空间不足:写满后网关停止",
        "the disk of the gateway's journal is nearly full: when it is full the gateway stops",
    ),
    "long_occupied": (
        "车位 {subject} 占用超过 {hours} 小时",
        "space {subject} occupied over {hours} h",
    ),
}
_ARRIVALS_REFUSED_TEXT = (
    "入口 {subject} 的到达请求被网关拒绝({reason}):那里的车辆得不到车位分配;请检查道闸控制器",
    "arrivals at entrance {subject} are refused by the gateway ({reason}): cars there get no"
    " space; check its gate controller",
)
_BOOT_CONFLICT_TEXT = (
    "边缘代理 {subject} 的报告(启动标识 {refused_boot})被网关拒绝,因为启动标识 {boot} 取代了它,"
    "而它仍在报告:其车位将变为未知。请重启真正的代理(其新的启动标识会被接受);如果没有人"
    "重启过它,启动标识 {boot} 来自别处:它的 MQTT 登录可能被盗用,请更改其密码;若有两个同名"
    "代理在运行,请停止其中一个",
    "edge agent {subject}'s reports of boot {refused_boot} are refused by the gateway since"
    " boot {boot} replaced it, yet it still reports: its spaces turn unknown. Restart the"
    " real agent (its new boot is then taken); if nobody restarted it, boot {boot} came from"
    " elsewhere: its broker login may be stolen, change its password; if two agents with"
    " this id run, stop one",
)
_PORT_OPEN_TEXT = (
    "总线 {subject}:串口正常,但没有节点应答(线缆或节点供电?)",
    "bus {subject}: the serial port is open but no node answers (cable or node power?)",
)
_PORT_LOST_TEXT = (
    "总线 {subject}:串口已断开(USB/RS-485 转换器拔出?),没有节点应答",
    "bus {subject}: its serial port is lost (USB/RS-485 adapter unplugged?): no node answers",
)
_NODE_DEAD_TEXT = (  # the site file says which spaces hang on the node (node_places)
    "节点 {subject} 无应答:其 {space_count} 个车位({spaces},{zones_zh})变为未知;"
    "请检查节点的电源和总线电缆",
    "node controller {subject} does not answer: its {space_count} spaces ({spaces}, "
    "{zones_en}) turn unknown; check the node's power and bus cable",
)
_NODE_DEAD_DETAILS = ("spaces", "space_count", "zones")
_NODE_PLACE_KINDS = ("node_error", "node_unreliable")  # named by place, as node_dead is


def _node_place(details: Mapping[str, Any]) -> tuple[str, str]:
    """Where a node is, by the spaces it serves (zh, en): '(30 spaces: B1-F-001…B1-F-030,
    zone F)'."""
    count, spaces, zones = (details[k] for k in ("space_count", "spaces", "zones"))
    several = "," in str(zones)
    return (
        f"({count} 个车位:{spaces},区域 {zones})",
        f"({count} spaces: {spaces}, zone{'s' if several else ''} {zones})",
    )


_CAMERA_FAULT_TEXT = {  # a blind camera's health says why (parking.payloads.HealthReport)
    "black": ("画面全黑(镜头被遮、摄像机或红外灯故障?)", "its picture is black (lens capped, "
              "camera or infrared light dead?)"),
    "frozen": ("画面冻结(摄像机死机?)", "its picture is frozen (the camera hung?)"),
    "blurred": ("画面模糊(镜头被遮挡、弄脏或起雾?)", "its picture is blurred (lens covered, "
                "smeared or misted?)"),
    "geometry": ("画面形状与站点文件不符(走廊模式、裁剪的码流?)", "its picture is not of the "
                 "site file's shape (corridor mode, a cropped stream?)"),
    "moved": ("视角已移动(被碰歪或转动?):请调回原位", "its view moved (knocked or turned?): "
              "set it back"),
    "other_view": ("画面不是画车位时的视角(转动、变焦、其他预置位?):请调回原位",
                   "it shows another view than its spaces were drawn on (turned, zoomed, "
                   "another PTZ preset?): set it back"),
    "replayed": ("画面是重复播放的录像(录像机或代理在循环播放?)", "its picture is a recording "
                 "played again (a recorder or proxy looping it?)"),
    "stream_lost": ("没有视频流(摄像机、线缆或网络故障?)", "no stream from it (camera, cable or "
                    "network down?)"),
}  # fmt: skip
_EXCEPTION_NAMES = {  # Modbus exception codes (docs/modbus.md)
    1: ("非法功能", "illegal function"),
    2: ("非法数据地址", "illegal data address"),
    3: ("非法数据值", "illegal data value"),
    4: ("从站设备故障", "server device failure"),
}
_EXCEPTION_ADVICE = {  # the usual cause: the site file asks for detectors the node lacks
    2: ("请核对站点文件中该节点的检测器数量", "check the site file's detectors against the node"),
}
_FOREIGN_NODE_TEXT = (  # the node says another detector count than the site file gives it
    "节点 {{subject}} 报告有 {count} 个检测器,与站点文件不符:串口上可能是另一条总线"
    "(USB 适配器互换?请用 /dev/serial/by-id 名称),或请改正站点文件中的 detectors",
    "node controller {{subject}} says it has {count} detectors, not the site file's: another "
    "bus on this port (USB adapters swapped? use /dev/serial/by-id names), or correct the "
    "site file's detectors",
)

_SITE_MISMATCH_TEXT = (
    "本 API 的站点文件(站点 {api_site},摘要 {api_digest})与网关的(站点 {gateway_site},"
    "摘要 {gateway_digest})不同:关闭和开放车位被拒绝,地图可能显示网关没有的区域和车位;"
    "请用网关的站点文件启动 API",
    "this API runs another site file (site {api_site}, digest {api_digest}) than the gateway "
    "(site {gateway_site}, digest {gateway_digest}): closing and opening spaces is refused, and "
    "the map may show zones and spaces the gateway does not have; start the API with the "
    "gateway's site file",
)
_SITE_MISMATCH_SAME_ID_TEXT = (  # one site id: an edit of its file, or another release
    "本 API 的站点文件(摘要 {api_digest})与网关的(摘要 {gateway_digest})不同,两者都是站点 "
    "{api_site}:文件被修改过,或 API 与网关是 parkguide 的不同版本;关闭和开放车位被拒绝,"
    "地图可能显示网关没有的区域和车位;请用网关的站点文件和版本启动 API",
    "this API runs another site file (digest {api_digest}) than the gateway (digest "
    "{gateway_digest}), both of site {api_site}: an edit of the file, or another release of "
    "parkguide on one of them; closing and opening spaces is refused, and the map may show "
    "zones and spaces the gateway does not have; start the API with the gateway's site file "
    "and release",
)
_SITE_MISMATCH_DETAILS = ("api_site", "api_digest", "gateway_site", "gateway_digest")

_INFLUX_TEXT = {
    "token": (
        "InfluxDB {url} 拒绝网关的令牌({error}):历史数据暂存在发件箱中(到上限为止),"
        "请检查 INFLUX_TOKEN 能否写入存储桶 {bucket},改正后重启网关",
        "InfluxDB {url} refuses the gateway's token ({error}): history waits in the outbox "
        "(up to its cap); check that INFLUX_TOKEN may write to bucket {bucket}, then restart "
        "the gateway",
    ),
    "write": (
        "网关写入 InfluxDB {url} 已失败一分钟以上({error}):历史数据暂存在发件箱中"
        "(到上限为止),InfluxDB 恢复后补写",
        "writes to InfluxDB {url} have failed for over a minute ({error}): history waits in "
        "the outbox (up to its cap) and is written when InfluxDB takes it again",
    ),
}
_INFLUX_DETAILS = ("url", "bucket", "error")

_DISK_TEXT = (
    "网关日志数据库所在磁盘({folder})剩余空间不足 {limit}:写满后网关停止,引导屏熄灭;"
    "请清理该磁盘或换用更大的磁盘(日志数据库的备份请存到别的磁盘)",
    "the disk of the gateway's journal ({folder}) has less than {limit} free: when it is full"
    " the gateway stops and the signs blank; free space on it or move the journal to a"
    " bigger disk (keep journal backups on another disk)",
)
_DISK_DETAILS = ("folder", "limit")


def _node_error_text(code: int) -> tuple[str, str]:
    zh_name, en_name = _EXCEPTION_NAMES.get(code, ("未知异常", "unknown exception"))
    zh = f"节点 {{subject}} 回应异常 {code}({zh_name})"
    en = f"node controller {{subject}} answers exception {code} ({en_name})"
    if code in _EXCEPTION_ADVICE:
        zh_advice, en_advice = _EXCEPTION_ADVICE[code]
        zh, en = f"{zh}:{zh_advice}", f"{en}: {en_advice}"
    return zh, en


@dataclass(frozen=True)
class Alert:
    id: str
    kind: str
    subject: str
    since: float | None  # when the condition began, if the data says so
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        if self.kind == "influx_failing" and self.subject != "token":
            return "warning"  # InfluxDB unreachable or failing: history waits, none lost yet
        if self.kind == "journal_disk_low" and self.subject == "critical":
            return "critical"
        return SEVERITY[self.kind]

    def message(self, long_occupied_h: float) -> tuple[str, str]:
        # details are not kept across a restart: until derived again, the plain text
        exception = self.details.get("exception")
        count = self.details.get("detector_count")
        if self.kind == "node_error" and isinstance(exception, int):
            zh, en = _node_error_text(exception)
        elif self.kind == "node_error" and isinstance(count, int):
            zh, en = (text.format(count=count) for text in _FOREIGN_NODE_TEXT)
        elif self.kind == "camera_blind" and self.details.get("fault") in _CAMERA_FAULT_TEXT:
            zh_why, en_why = _CAMERA_FAULT_TEXT[self.details["fault"]]
            zh, en = f"摄像头 {{subject}} 看不见:{zh_why}", f"camera {{subject}} is blind: {en_why}"
        elif self.kind == "arrivals_refused" and isinstance(self.details.get("reason"), str):
            why = self.details["reason"]
            zh, en = (text.replace("{reason}", why) for text in _ARRIVALS_REFUSED_TEXT)
        elif self.kind == "agent_boot_conflict" and all(
            isinstance(self.details.get(k), str) for k in ("boot", "refused_boot")
        ):
            boots = {k: self.details[k] for k in ("boot", "refused_boot")}
            zh, en = (text.format(subject="{subject}", **boots) for text in _BOOT_CONFLICT_TEXT)
        elif self.kind == "node_dead" and all(k in self.details for k in _NODE_DEAD_DETAILS):
            values = {k: self.details[k] for k in _NODE_DEAD_DETAILS}
            zones = str(values["zones"])
            several = "," in zones
            values["zones_zh"] = f"区域 {zones}"
            values["zones_en"] = f"zone{'s' if several else ''} {zones}"
            zh, en = (text.format(subject="{subject}", **values) for text in _NODE_DEAD_TEXT)
        elif self.kind == "bus_blind" and self.details.get("port") == "lost":
            zh, en = _PORT_LOST_TEXT
        elif self.kind == "bus_blind" and self.details.get("port") == "open":
            zh, en = _PORT_OPEN_TEXT
        elif self.kind == "site_mismatch" and all(
            k in self.details for k in _SITE_MISMATCH_DETAILS
        ):
            values = {k: self.details[k] for k in _SITE_MISMATCH_DETAILS}
            same = values["api_site"] == values["gateway_site"]
            zh, en = _SITE_MISMATCH_SAME_ID_TEXT if same else _SITE_MISMATCH_TEXT
            return zh.format(**values), en.format(**values)
        elif (
            self.kind == "influx_failing"
            and self.subject in _INFLUX_TEXT
            and all(k in self.details for k in _INFLUX_DETAILS)
        ):
            values = {k: self.details[k] for k in _INFLUX_DETAILS}
            zh, en = _INFLUX_TEXT[self.subject]
            return zh.format(**values), en.format(**values)
        elif self.kind == "journal_disk_low" and all(k in self.details for k in _DISK_DETAILS):
            values = {k: self.details[k] for k in _DISK_DETAILS}
            return _DISK_TEXT[0].format(**values), _DISK_TEXT[1].format(**values)
        else:
            zh, en = _TEXT[self.kind]
        space = self.details.get("space")
        subject = f"{self.subject} ({space})" if space else self.subject
        values = {"subject": subject, "hours": f"{long_occupied_h:g}"}
        if self.kind in _NODE_PLACE_KINDS and all(k in self.details for k in _NODE_DEAD_DETAILS):
            zh_where, en_where = _node_place(self.details)
            return (
                zh.format(**{**values, "subject": f"{subject}{zh_where}"}),
                en.format(**{**values, "subject": f"{subject} {en_where}"}),
            )
        return zh.format(**values), en.format(**values)


BATTERY_REPLACED_PERCENT = BATTERY_LOW_PERCENT + 10
"""A ``battery_low`` alert ends once the battery reads this much: a cell reads a few percent
higher warm than cold, and an alert ending and beginning again at one level every day would
be a new episode each night (its acknowledgement carried over, ACK_CARRY_S, but its count and
the log going up for nothing)."""


def battery_low(battery: int | None, open_now: bool) -> bool:
    """Whether a detector's battery calls for ``battery_low`` (``open_now``: it is open)."""
    if battery is None:
        return False
    return battery <= BATTERY_LOW_PERCENT or (open_now and battery < BATTERY_REPLACED_PERCENT)


def node_places(site: Site) -> dict[str, dict[str, str]]:
    """Per node (``bus/address``, as alert subjects name it): the spaces its detectors serve
    (``spaces``: the first and last id, or the ids when few), how many (``space_count``) and
    their zones (``zones``), for a ``node_dead`` alert to say where the bays went unknown."""
    out: dict[str, dict[str, str]] = {}
    for bus in site.buses:
        for node in bus.nodes:
            ids = sorted(s for s in node.spaces if s is not None)
            if not ids:
                continue
            zones = sorted({site.space(s).zone for s in ids})
            shown = ", ".join(ids) if len(ids) <= 3 else f"{ids[0]}…{ids[-1]}"
            out[f"{bus.id}/{node.address}"] = {
                "spaces": shown,
                "space_count": str(len(ids)),
                "zones": ", ".join(zones),
            }
    return out


def derive_alerts(
    spaces: Iterable[SpaceStatus],
    agents: Iterable[AgentStatus],
    now: float,
    long_occupied_s: float,
    broker_up: bool = True,
    broker_back_since: float | None = None,
    *,
    gateway_online: bool | None = None,
    site: str = "site",
    listening_since: float | None = None,
    open_ids: Collection[str] = (),
    refusals: Mapping[str, EntranceRefusals] | None = None,
    broker: str = "mqtt",
    places: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Alert]:
    """Every alert the state calls for right now, in a stable order. Without the broker
    (``broker_up`` False) one alert says so, and none about the agents or the gateway: what
    is known of them is from before (a broker stopped sends every agent's last will, though
    they are alive and spooling). For AGENT_REJOIN_S after it is back (``broker_back_since``),
    an agent offline is not yet an alert: those wills are retained, and the agents come
    back when their reconnect backoff (at most 30 s) ends.

    ``gateway_online`` is the gateway's retained availability as a stand-alone API hears it
    (None: not known, or the gateway itself): False raises ``gateway_offline:{site}``. An
    agent never heard from (offline, no ``last_seen`` and no health: the views list every
    agent of the site file) raises ``agent_never_seen`` once NEVER_SEEN_GRACE_S have passed
    since ``listening_since`` (when the view could first hear it: started and connected;
    None: no such alert). ``open_ids``: the alerts open now, for those that end at another
    level than they begin at (``battery_low``). ``refusals``: arrivals refused per entrance
    lately (``arrivals_refused``: a gate controller whose cars get no space). ``broker``: the
    broker's ``host:port``, named by ``broker_lost`` (whose id stays ``broker_lost:mqtt``: one
    broker per process, and an open episode kept across a restart with another address).
    ``places``: per node, the spaces it serves (``node_places``), in a ``node_dead``
    alert's details."""
    out: list[Alert] = []
    if not broker_up:
        out.append(Alert("broker_lost:mqtt", "broker_lost", broker, None, {"broker": broker}))
        agents = ()
    elif gateway_online is False:
        out.append(Alert(f"gateway_offline:{site}", "gateway_offline", site, None))
    for entrance, r in sorted((refusals or {}).items()):
        # details: the newest reason only (a count moves with every refusal, and the
        # dashboard redraws an alert whose answer changed)
        details = {"reason": r.reason}
        out.append(
            Alert(f"arrivals_refused:{entrance}", "arrivals_refused", entrance, None, details)
        )
    rejoining = broker_back_since is not None and now - broker_back_since < AGENT_REJOIN_S
    settled = listening_since is not None and now - listening_since >= NEVER_SEEN_GRACE_S
    for a in agents:
        c = a.boot_conflict
        if c is not None:
            # its real reports refused: its spaces go unknown while its health still says ok
            details = {"boot": c.boot, "refused_boot": c.refused_boot}
            aid = f"agent_boot_conflict:{a.agent}"
            out.append(Alert(aid, "agent_boot_conflict", a.agent, c.since, details))
        if not a.online and a.last_seen is None and a.health is None:
            # not a word from it since the view began listening: a unit not started, or
            # one whose broker address or credentials are wrong (commissioning day)
            if settled:
                out.append(Alert(f"agent_never_seen:{a.agent}", "agent_never_seen", a.agent, None))
            continue
        if not a.online:
            if not rejoining:
                out.append(Alert(f"agent_offline:{a.agent}", "agent_offline", a.agent, a.last_seen))
            continue  # its health is stale: do not also report its detectors
        h = a.health
        if h is None:
            continue
        if h.counters.get("spool_full"):  # reports go out from memory: none kept on disk
            out.append(Alert(f"spool_full:{a.agent}", "spool_full", a.agent, None))
        # a serial agent's health lists its bus's nodes, a camera agent's never has any
        is_bus = bool(h.nodes)
        if h.status == "blind" and is_bus:
            # one alert for the bus: a node_dead per node would send the technician to the
            # nodes instead of the adapter or the cable they all hang on
            port_up = h.counters.get("port_up")  # absent: an agent that does not say
            port = {"port": "lost" if port_up == 0 else "open"} if port_up in (0, 1) else {}
            out.append(
                Alert(
                    f"bus_blind:{h.source}",
                    "bus_blind",
                    h.source,
                    None,
                    {"agent": a.agent, **port},
                )
            )
            continue
        if h.status == "blind":
            why = {"fault": h.fault} if h.fault in _CAMERA_FAULT_TEXT else {}
            out.append(
                Alert(
                    f"camera_blind:{h.source}",
                    "camera_blind",
                    h.source,
                    None,
                    {"agent": a.agent, **why},
                )
            )
        for node in h.nodes:
            where = f"{h.source}/{node.address}"
            if node.status == "dead":
                details = {"agent": a.agent, **(places or {}).get(where, {})}
                out.append(Alert(f"node_dead:{where}", "node_dead", where, None, details))
                continue
            # it answers, but with an exception, or as another node (another bus's, on this
            # port): not with its bits
            why = {k: node.errors[k] for k in ("exception", "detector_count") if k in node.errors}
            place = (places or {}).get(where, {})  # where the technician finds the node
            if why:
                details = {"agent": a.agent, **why, **place}
                out.append(Alert(f"node_error:{where}", "node_error", where, None, details))
                continue
            if node.status == "slow":  # it answers, but polls fail (CRC errors, timeouts)
                # no error counts in the details: they move with every health report, and
                # the dashboard redraws an alert whose answer changed (a note being typed)
                details = {"agent": a.agent, **place}
                out.append(
                    Alert(f"node_unreliable:{where}", "node_unreliable", where, None, details)
                )
            for d in node.detectors:
                status = {"stuck": "detector_stuck", "flapping": "detector_flapping"}.get(
                    d.status, "detector_fault" if d.status in {"dead", "fault"} else None
                )
                subject = f"{where}/{d.index}"
                kinds = [status] if status else []
                # judged apart from the status: a dying detector that flaps a while keeps
                # its acknowledged battery episode. A wireless detector that will die within
                # weeks: replaced on a round before its bay turns unknown (the percentage
                # stays out of the details: it moves, and the dashboard redraws an alert
                # whose answer changed)
                if battery_low(d.battery, f"battery_low:{subject}" in open_ids):
                    kinds.append("battery_low")
                for kind in kinds:
                    out.append(
                        Alert(
                            f"{kind}:{subject}",
                            kind,
                            subject,
                            None,
                            {"agent": a.agent, "space": d.space},
                        )
                    )
    out.extend(long_occupied_alerts(spaces, now, long_occupied_s))
    return out


def long_occupied_alerts(
    spaces: Iterable[SpaceStatus], now: float, long_occupied_s: float
) -> list[Alert]:
    """The alerts the spaces call for (a car parked longer than ``long_occupied_s``): the
    part of ``derive_alerts`` that agents' health and availability do not change."""
    out: list[Alert] = []
    for s in spaces:
        # since the car came, by the sensor's account when there is one: a short outage of
        # the source (unknown, then occupied again) does not start the count again
        began = s.since if s.observed_since is None else min(s.since, s.observed_since)
        if s.state == "occupied" and now - began > long_occupied_s:
            out.append(
                Alert(f"long_occupied:{s.space}", "long_occupied", s.space, began, {"zone": s.zone})
            )
    return out


def site_mismatch_alert(
    api_site: str, api_digest: str, gateway_site: str | None, gateway_digest: str
) -> Alert:
    """The gateway's journal names another site file than this API's (``api.sitecheck``):
    one alert per API site, whatever the gateway's file (the id stays while it is wrong)."""
    details = {
        "api_site": api_site,
        "api_digest": api_digest[:12],
        "gateway_site": gateway_site if gateway_site is not None else "?",
        "gateway_digest": gateway_digest[:12],
    }
    return Alert(f"site_mismatch:{api_site}", "site_mismatch", api_site, None, details)


def influx_failing_alert(cause: str, url: str, bucket: str, error: str, since: float) -> Alert:
    """The gateway's InfluxDB writer cannot write (``api.outbox_status``): ``cause`` is
    ``token`` (refused: critical) or ``write`` (failing for another reason: warning), one
    episode each, so an acknowledged outage does not hide a refused token that follows."""
    details = {"url": url, "bucket": bucket, "error": error, "cause": cause}
    return Alert(f"influx_failing:{cause}", "influx_failing", cause, since, details)


def journal_disk_alert(level: str, folder: str, limit_bytes: float) -> Alert:
    """The journal's disk has less than ``limit_bytes`` free (``api.disk_status``); ``level``
    ``warning`` or ``critical``, one episode each. The details hold the limit, not the free
    bytes: they move with every write, and the dashboard redraws an alert whose answer
    changed."""
    details = {"folder": folder, "limit": _megabytes(limit_bytes)}
    return Alert(f"journal_disk_low:{level}", "journal_disk_low", level, None, details)


def _megabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


LOG_FLAP_S = 60.0
"""At most one "alert raised" line per alert this often: the episodes of a flapping alert
(an agent going offline and back every few seconds) in between are counted, not logged."""


@dataclass
class _Logged:
    """What the log last said of one alert (``AlertBook``'s flap limit)."""

    at: float  # when its last "raised" line went out
    episode: bool  # the current (or last) episode's raise was logged: so is its clear
    skipped: int  # raises and clears not logged since
    rec: AlertRecord


def _log_episode(
    rec: AlertRecord, what: str, now: float, long_occupied_h: float, skipped: int = 0
) -> None:
    """One line when an episode opens (WARNING for critical and warning alerts) and one when
    it clears (INFO): the log says what the dashboard said, and for how long."""
    a = rec.alert
    en = a.message(long_occupied_h)[1]
    more = f" ({skipped} more raises and clears not logged: it flaps)" if skipped else ""
    if what == "raised":
        level = logging.WARNING if a.severity in ("critical", "warning") else logging.INFO
        log.log(
            level,
            "alert raised (%s): %s [%s, subject %s]%s",
            a.severity,
            en,
            a.id,
            a.subject,
            more,
        )
    elif skipped:  # said once it flapped no more: cleared by now, since when is not kept
        log.info("alert cleared: %s [%s, subject %s]%s", en, a.id, a.subject, more)
    else:
        log.info(
            "alert cleared after %.0f s: %s [%s, subject %s]",
            max(0.0, now - rec.since),
            en,
            a.id,
            a.subject,
        )


@dataclass(frozen=True)
class AlertRecord:
    alert: Alert
    since: float
    acked_by: str | None = None
    acked_at: float | None = None
    note: str | None = None
    episodes: int = 1  # this one and those before it, each within ACK_CARRY_S of the last
    cleared: float | None = None  # a cleared episode (``cleared_since``): when it ended


class AlreadyAcknowledged(Exception):
    """Another user acknowledged the episode first: ``record`` holds who, when and their note
    (kept: a second acknowledgement never replaces the first)."""

    def __init__(self, record: AlertRecord):
        super().__init__(record.alert.id)
        self.record = record


def _normal_note(note: str | None) -> str | None:
    note = note.strip() if note else None
    return note or None


class AlertBook:
    """Open alert episodes, kept in the ``alerts`` table so a restart keeps acknowledgements.

    The table is the source of truth: several API processes on one journal each derive the
    alerts from their own view, but an episode's start and its acknowledgement are the
    table's. Listing (``current``) and every check (``update``) read the open rows' start and
    acknowledgement back (the open alerts are few), so an acknowledgement made through one
    process shows in every other within its check interval; ``take_changed`` names the
    alerts whose row changed that way, for the monitor to push to its pages."""

    def __init__(self, db_path: str | None):
        self.db_path = db_path
        self._lock = threading.Lock()
        self._open: dict[str, AlertRecord] = {}
        self._changed: set[str] = set()  # rows changed by another process, not yet pushed
        self._write_failed_logged = -math.inf
        self._read_failed_logged = -math.inf
        self._logged: dict[str, _Logged] = {}  # alert id -> what the log last said of it
        # the last cleared episode per alert this process saw end: its acknowledgement carries
        # over without a database, and its details (not kept in the table) are listed
        self._cleared: dict[str, AlertRecord] = {}
        self.raised_total: dict[str, int] = dict.fromkeys(SEVERITY, 0)  # episodes, per kind
        if db_path:
            with closing(self._connect()) as db, db:
                db.execute(ALERTS_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
                if "episodes" not in columns:
                    db.execute(_EPISODES_COLUMN)
                rows = db.execute(
                    "SELECT id, kind, subject, since, acked_by, acked_at, note, episodes "
                    "FROM alerts WHERE cleared IS NULL"
                ).fetchall()
            for aid, kind, subject, since, by, at, note, episodes in rows:
                if kind in SEVERITY:
                    self._open[aid] = AlertRecord(
                        Alert(aid, kind, subject, since), since, by, at, note, episodes
                    )

    def _connect(self) -> sqlite3.Connection:
        assert self.db_path
        db = sqlite3.connect(self.db_path, timeout=5.0)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _refresh(self) -> None:
        """Take the open rows' start and acknowledgement from the table (under ``_lock``).
        A row another process cleared, or never wrote, leaves this process's episode as it
        is: its view still says the condition holds."""
        if not self.db_path or not self._open:
            return
        try:
            with closing(self._connect()) as db:
                rows = db.execute(
                    "SELECT id, since, acked_by, acked_at, note, episodes FROM alerts "
                    "WHERE cleared IS NULL"
                ).fetchall()
        except sqlite3.Error as exc:
            # what this process knows still shows; other processes' acknowledgements wait
            now = time.time()
            if now - self._read_failed_logged >= 60:
                self._read_failed_logged = now
                log.error("alerts database %s refused a read: %s", self.db_path, exc)
            return
        for aid, since, by, at, note, episodes in rows:
            rec = self._open.get(aid)
            row = (since, by, at, note, episodes)
            if (
                rec is None
                or (rec.since, rec.acked_by, rec.acked_at, rec.note, rec.episodes) == row
            ):
                continue
            self._open[aid] = replace(
                rec, since=since, acked_by=by, acked_at=at, note=note, episodes=episodes
            )
            self._changed.add(aid)

    def current(self) -> list[AlertRecord]:
        with self._lock:
            self._refresh()
            return sorted(self._open.values(), key=lambda r: (r.since, r.alert.id))

    def cleared_since(self, ts: float) -> list[AlertRecord]:
        """The alerts whose last episode cleared at or after ``ts`` and that are not open
        again, newest clear first. The table keeps the last episode per alert, which is
        what "cleared lately" asks; its details are not kept there, so an episode another
        process saw end (or one from before a restart) has the plain message."""
        with self._lock:
            if not self.db_path:
                recs = [
                    r for r in self._cleared.values() if r.cleared is not None and r.cleared >= ts
                ]
                return sorted(recs, key=lambda r: (-(r.cleared or 0.0), r.alert.id))
            try:
                with closing(self._connect()) as db:
                    rows = db.execute(
                        "SELECT id, kind, subject, since, cleared, acked_by, acked_at, note, "
                        "episodes FROM alerts WHERE cleared >= ? ORDER BY cleared DESC, id",
                        (ts,),
                    ).fetchall()
            except sqlite3.Error as exc:
                log.error("alerts database %s refused a read: %s", self.db_path, exc)
                raise
            out = []
            for aid, kind, subject, since, cleared, by, at, note, episodes in rows:
                if kind not in SEVERITY or aid in self._open:
                    continue
                known = self._cleared.get(aid)
                alert = known.alert if known is not None and known.since == since else None
                out.append(
                    AlertRecord(
                        alert or Alert(aid, kind, subject, since),
                        since,
                        by,
                        at,
                        note,
                        episodes,
                        cleared,
                    )
                )
            return out

    def take_changed(self) -> list[AlertRecord]:
        """Open alerts whose row another process changed (acknowledged, or a new episode)
        since last asked."""
        with self._lock:
            out = [self._open[aid] for aid in sorted(self._changed) if aid in self._open]
            self._changed.clear()
        return out

    def update(
        self,
        alerts: list[Alert],
        now: float,
        keep_open: bool | frozenset[str] = False,
        long_occupied_h: float = 72.0,
    ) -> tuple[list[AlertRecord], list[str]]:
        """Take the derived alerts; returns (new episodes, cleared alert ids). With
        ``keep_open`` no agent alert (AGENT_KINDS) is cleared: the view does not know yet (just started, or the
        broker just came back, and the retained health and availability are still on
        their way), and clearing would end acknowledged episodes that are still true; a set
        of kinds keeps those kinds' episodes only.
        Each new episode is logged once (WARNING when critical or a warning, else INFO), and
        each cleared one (INFO), with its English message (``long_occupied_h``: its hours)."""
        kept = AGENT_KINDS if keep_open is True else (keep_open or frozenset())
        with self._lock:
            seen = {a.id for a in alerts}
            raised: list[AlertRecord] = []
            for a in alerts:
                rec = self._open.get(a.id)
                if rec is None:
                    rec = AlertRecord(a, a.since if a.since is not None else now)
                    last = self._cleared.pop(a.id, None)
                    if (
                        last is not None
                        and a.kind in ACK_CARRY_KINDS
                        and (last.cleared or 0.0) >= rec.since - ACK_CARRY_S
                    ):
                        # the same fault back within a day: what was done about it holds
                        rec = replace(
                            rec,
                            acked_by=last.acked_by,
                            acked_at=last.acked_at,
                            note=last.note,
                            episodes=last.episodes + 1,
                        )
                    raised.append(rec)
                    self.raised_total[a.kind] = self.raised_total.get(a.kind, 0) + 1
                self._open[a.id] = replace(rec, alert=a)
            cleared = [
                (aid, rec.since)
                for aid, rec in self._open.items()
                if aid not in seen and rec.alert.kind not in kept
            ]
            ended = [self._open[aid] for aid, _ in cleared]
            for aid, _ in cleared:
                self._cleared[aid] = replace(self._open.pop(aid), cleared=now)
                self._changed.discard(aid)
        self._log(raised, ended, now, long_occupied_h)
        if self.db_path and (raised or cleared):
            try:
                with closing(self._connect()) as db, db:
                    # a new episode replaces a cleared row only: a row still open is the
                    # episode another process raised first (and may have acknowledged).
                    # The row's acknowledgement carries over when it cleared within
                    # ACK_CARRY_S (whichever process saw it clear), else it is a fresh one
                    db.executemany(
                        "INSERT INTO alerts (id, kind, subject, since, cleared, acked_by, "
                        "acked_at, note, episodes) VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, "
                        "NULL, 1) "
                        "ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, "
                        "subject = excluded.subject, since = excluded.since, cleared = NULL, "
                        "acked_by = iif(alerts.cleared >= ?5, alerts.acked_by, NULL), "
                        "acked_at = iif(alerts.cleared >= ?5, alerts.acked_at, NULL), "
                        "note = iif(alerts.cleared >= ?5, alerts.note, NULL), "
                        "episodes = iif(alerts.cleared >= ?5, alerts.episodes + 1, 1) "
                        "WHERE alerts.cleared IS NOT NULL",
                        [
                            (
                                r.alert.id,
                                r.alert.kind,
                                r.alert.subject,
                                r.since,
                                # a kind that asks anew: no clear is that recent
                                r.since - ACK_CARRY_S
                                if r.alert.kind in ACK_CARRY_KINDS
                                else math.inf,
                            )
                            for r in raised
                        ],  # fmt: skip
                    )
                    # the episode this process knew: not one raised again since by another
                    db.executemany(
                        "UPDATE alerts SET cleared = ? WHERE id = ? AND cleared IS NULL "
                        "AND since = ?",
                        [(now, aid, since) for aid, since in cleared],
                    )
            except sqlite3.Error as exc:
                # the alerts still show and are pushed live; only their history is short
                if now - self._write_failed_logged >= 60:
                    self._write_failed_logged = now
                    log.error("alerts database %s refused a write: %s", self.db_path, exc)
        with self._lock:
            self._refresh()
            for rec in raised:  # pushed as raised already
                self._changed.discard(rec.alert.id)
            # as the table has them: an acknowledgement carried over from another process's
            raised = [self._open.get(r.alert.id, r) for r in raised]
        return raised, [aid for aid, _ in cleared]

    def _log(
        self, raised: list[AlertRecord], ended: list[AlertRecord], now: float, hours: float
    ) -> None:
        """Log new and cleared episodes, at most one raise per alert per LOG_FLAP_S (and the
        clear of each episode whose raise was logged); a flapping alert's other episodes
        are counted, and said with its next line, or once it is quiet a minute, so the log
        ends on its state now."""
        with self._lock:
            lines: list[tuple[AlertRecord, str, int]] = []
            for rec in raised:
                known = self._logged.get(rec.alert.id)
                if known is not None and now - known.at < LOG_FLAP_S:
                    known.skipped, known.episode, known.rec = known.skipped + 1, False, rec
                    continue
                skipped = known.skipped if known is not None else 0
                self._logged[rec.alert.id] = _Logged(now, True, 0, rec)
                lines.append((rec, "raised", skipped))
            for rec in ended:
                known = self._logged.get(rec.alert.id)
                if known is not None and not known.episode:
                    known.skipped, known.rec = known.skipped + 1, rec
                    continue
                if known is not None:
                    known.episode = False
                lines.append((rec, "cleared", 0))
            for aid, known in list(self._logged.items()):
                if now - known.at < LOG_FLAP_S:
                    continue
                if known.skipped:  # quiet for a while after flapping: its state now
                    rec = self._open.get(aid)
                    what = "raised" if rec is not None else "cleared"
                    lines.append((rec or known.rec, what, known.skipped))
                    known.at, known.skipped, known.episode = now, 0, rec is not None
                elif not known.episode:
                    del self._logged[aid]  # said all there was: forgotten
        for rec, what, skipped in lines:
            _log_episode(rec, what, now, hours, skipped)

    def acknowledge(self, alert_id: str, by: str, note: str | None, now: float) -> AlertRecord:
        """Acknowledge the open episode of an alert; KeyError when it is not open. The first
        acknowledgement holds: when another user acknowledged the episode first (through this
        process or another on the same journal), AlreadyAcknowledged says who, when and with
        what note, and nothing changes. The same user acknowledging again keeps the first
        time; a note given replaces that user's earlier note, none keeps it. Written before it
        is shown: an acknowledgement the database refused (sqlite3.Error) is not one, and the
        page must not show it as one."""
        note = _normal_note(note)
        with self._lock:
            rec = self._open.get(alert_id)
            if rec is None:
                raise KeyError(alert_id)
            if not self.db_path:
                if rec.acked_by is not None and rec.acked_by != by:
                    raise AlreadyAcknowledged(rec)
                if rec.acked_by is None:
                    rec = replace(rec, acked_by=by, acked_at=now, note=note)
                elif note is not None:
                    rec = replace(rec, note=note)
                self._open[alert_id] = rec
                return rec
            db = self._connect()
            try:
                db.isolation_level = None  # our own transaction: read and write as one
                db.execute("BEGIN IMMEDIATE")  # no other process acknowledges in between
                row = db.execute(
                    "SELECT since, cleared, acked_by, acked_at, note FROM alerts WHERE id = ?",
                    (alert_id,),
                ).fetchone()
                if row is None or row[1] is not None:
                    # no open row (its raise was not written, or another process saw it
                    # clear): this process's episode, as it shows it, with the acknowledgement
                    rec = replace(rec, acked_by=by, acked_at=now, note=note)
                    db.execute(
                        "INSERT OR REPLACE INTO alerts (id, kind, subject, since, cleared, "
                        "acked_by, acked_at, note, episodes) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                        (rec.alert.id, rec.alert.kind, rec.alert.subject, rec.since, by, now,
                         note, rec.episodes),
                    )  # fmt: skip
                else:
                    since, _, first_by, first_at, first_note = row
                    if first_by is not None and first_by != by:
                        db.execute("ROLLBACK")
                        rec = replace(
                            rec, since=since, acked_by=first_by, acked_at=first_at, note=first_note
                        )
                        self._open[alert_id] = rec
                        self._changed.discard(alert_id)  # the route pushes it
                        raise AlreadyAcknowledged(rec)
                    at = first_at if first_by is not None else now
                    kept = first_note if first_by is not None and note is None else note
                    rec = replace(rec, since=since, acked_by=by, acked_at=at, note=kept)
                    db.execute(
                        "UPDATE alerts SET acked_by = ?, acked_at = ?, note = ? WHERE id = ?",
                        (by, at, kept, alert_id),
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()
            self._open[alert_id] = rec
            self._changed.discard(alert_id)  # the route pushes it
        return rec
