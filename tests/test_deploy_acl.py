"""The shipped Mosquitto config and ACL: an agent cannot publish as another agent,
and the gateway can publish only its outputs. Real mosquitto, real passwords file."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.publisher import ECHO_WAIT_S, ReportPublisher
from gateway.service import ECHO_QUIET_S
from parkguide.supervisor import stop_process
from parking import topics
from parking.broker import BrokerConfig
from tests.conftest import (
    BROKER_COMMANDS,
    EXAMPLE_SITE,
    REPO,
    MosquittoBroker,
    cli_exit_code,
    command_argv,
    parkguide_cmd,
    require,
)

DEPLOY = REPO / "deploy" / "mosquitto"
SITE = "xinyuan"


def _as_mosquitto_can_read(tmp_path: Path) -> Path | None:
    """As root with a 'mosquitto' user: a fresh folder under /tmp it may enter."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    folder = Path(tempfile.mkdtemp(prefix="parkguide-broker-"))
    folder.chmod(0o755)
    return folder


@contextlib.contextmanager
def _secured(tmp_path: Path, acl_source: Path):
    """mosquitto with the shipped conf, a passwords file made by make-passwords.sh and the
    ACL ``acl_source``; yields (broker, {user: password})."""
    require("mosquitto")
    passwd_bin = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    users = {
        u: secrets.token_urlsafe(12)
        # north, east: per-entrance gate logins; gate-north: a per-sign login
        for u in ("gateway", "api", "serial-bus-g", "serial-bus-b1", "gate", "north", "east")
        + ("gate-north",)
    }
    # mosquitto reads the password and ACL files after dropping to its own user: as
    # root, a folder it may enter (pytest's tmp folders are root-only), and no 'user root'
    # (the file's owner is what make-passwords.sh must get right)
    shared = _as_mosquitto_can_read(tmp_path)
    pwfile = (shared or tmp_path) / "passwd"
    env = {f"PASS_{u.replace('-', '_')}": p for u, p in users.items()}
    subprocess.run(
        ["bash", str(DEPLOY / "make-passwords.sh"), str(pwfile), *users],
        env={"PATH": f"{Path(passwd_bin).parent}:/usr/bin:/bin", **env},
        check=True,
        capture_output=True,
    )
    conf = (DEPLOY / "parkguide.conf").read_text()
    body = []
    for line in conf.splitlines():
        key = line.split(" ", 1)[0]
        if key in {"listener", "persistence"}:
            continue  # the fixture sets its own free port, no persistence
        if key == "password_file":
            line = f"password_file {pwfile}"
        if key == "acl_file":
            acl = acl_source
            if shared is not None:
                acl = Path(shutil.copy(acl, shared / "parkguide.acl"))
            line = f"acl_file {acl}"
        body.append(line)
    if os.geteuid() == 0 and shared is None:
        body.append("user root")  # no 'mosquitto' user here to drop to
    broker = MosquittoBroker(tmp_path, extra_conf="\n".join(body) + "\n")
    broker.start()
    try:
        yield broker, users
    finally:
        broker.stop()
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


def _site_acl(tmp_path: Path) -> Path:
    """The ACL ``parkguide site acl`` writes for the example site, with the shared logins."""
    out = tmp_path / "site.acl"
    argv = ["site", "acl", str(EXAMPLE_SITE), "--shared-logins", "--out", str(out)]
    subprocess.run(parkguide_cmd(*argv), check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture
def secured_broker(tmp_path: Path):
    """The shipped ACL (patterns)."""
    with _secured(tmp_path, DEPLOY / "parkguide.acl") as running:
        yield running


@pytest.fixture(params=["shipped", "site"])
def either_acl(request, tmp_path: Path):
    """The shipped ACL, then the one ``parkguide site acl`` makes: the same rights."""
    acl = DEPLOY / "parkguide.acl" if request.param == "shipped" else _site_acl(tmp_path)
    with _secured(tmp_path, acl) as running:
        yield running


def _client(broker: MosquittoBroker, user: str, password: str) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"t-{user}-{secrets.token_hex(3)}",
        protocol=mqtt.MQTTv5,
    )
    c.username_pw_set(user, password)
    connected: queue.Queue = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: connected.put(rc)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    rc = connected.get(timeout=5)
    assert not rc.is_failure, f"{user} refused: {rc}"
    return c


def _publish_reason(c: mqtt.Client, topic: str, payload: bytes) -> int:
    acks: queue.Queue = queue.Queue()
    c.on_publish = lambda cl, ud, mid, rc, props: acks.put((mid, rc))
    info = c.publish(topic, payload, qos=1)
    mid, rc = acks.get(timeout=5)
    assert mid == info.mid
    return rc.value


def _listening(
    broker: MosquittoBroker, users: dict[str, str], user: str, *filters: str
) -> tuple[mqtt.Client, queue.Queue]:
    """``user`` logged in and subscribed to ``filters`` (default: the whole site), the topics
    it receives going into the queue."""
    c = _client(broker, user, users[user])
    got: queue.Queue = queue.Queue()
    c.on_message = lambda cl, ud, msg: got.put(msg.topic)
    for f in filters or (f"{topics.PREFIX}/{SITE}/#",):
        c.subscribe(f, qos=1)
    time.sleep(0.3)
    return c, got


def _reads_exactly(gw: mqtt.Client, got: queue.Queue, sent: list[str], seen: set[str]) -> None:
    """The gateway publishes on each of ``sent``; the reader (subscribed to the whole site,
    into ``got``) receives exactly ``seen``: the broker dropped the rest for it."""
    for topic in sent:
        assert _publish_reason(gw, topic, b"{}") in (0, 0x10)  # 0x10: no matching subscriber
    assert {got.get(timeout=5) for _ in seen} == seen
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)


def test_agent_cannot_publish_as_another_agent(either_acl):
    broker, users = either_acl
    gw = _client(broker, "gateway", users["gateway"])
    got: queue.Queue = queue.Queue()
    gw.on_message = lambda cl, ud, msg: got.put((msg.topic, msg.payload))
    gw.subscribe(f"{topics.PREFIX}/{SITE}/edge/#", qos=1)
    time.sleep(0.3)

    agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
    own = topics.edge_occupancy(SITE, "serial-bus-g")
    spoof = topics.edge_occupancy(SITE, "serial-bus-b1")
    assert _publish_reason(agent, spoof, b'{"spoofed": true}') == 0x87  # Not authorized
    assert _publish_reason(agent, own, b'{"own": true}') == 0
    topic, payload = got.get(timeout=5)
    assert (topic, payload) == (own, b'{"own": true}')
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)  # the spoofed report never reached the gateway
    for c in (gw, agent):
        c.loop_stop()
        c.disconnect()


def test_gateway_writes_only_its_outputs_and_anonymous_is_refused(either_acl):
    broker, users = either_acl
    gw = _client(broker, "gateway", users["gateway"])
    # 0x10 "no matching subscribers" is still an accepted publish
    assert _publish_reason(gw, topics.display_content(SITE, "gate-north"), b"{}") in (0, 0x10)
    assert _publish_reason(gw, topics.edge_occupancy(SITE, "serial-bus-g"), b"{}") == 0x87
    assert _publish_reason(gw, topics.arrival(SITE, "north"), b"{}") == 0x87
    gw.loop_stop()
    gw.disconnect()

    anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    result: queue.Queue = queue.Queue()
    anon.on_connect = lambda cl, ud, flags, rc, props: result.put(rc)
    anon.connect("127.0.0.1", broker.port)
    anon.loop_start()
    rc = result.get(timeout=5)
    assert rc.is_failure
    anon.loop_stop()
    # a wrong password is refused too
    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    bad.username_pw_set("serial-bus-g", "not-the-password")
    bad.on_connect = lambda cl, ud, flags, rc, props: result.put(rc)
    bad.connect("127.0.0.1", broker.port)
    bad.loop_start()
    assert result.get(timeout=5).is_failure
    bad.loop_stop()


def test_client_ids_cannot_be_guessed_without_the_password():
    """Any broker login may take over a client id (mosquitto closes the old connection and
    fires its last will): with credentials, the gateway's and the agents' ids carry a
    random suffix their owner keeps (stable across restarts for persistent sessions,
    unknown to the other users), never anything derived from the password, which
    mosquitto's log would give away to a brute force."""
    from parking.broker import BrokerConfig, is_client_suffix, new_client_suffix

    with_pw = BrokerConfig.from_url("mqtt://gateway:s3cret@127.0.0.1:1883")
    other = BrokerConfig.from_url("mqtt://gateway:different@127.0.0.1:1883")
    base = "parkguide-gateway-xinyuan"
    kept = new_client_suffix()
    assert is_client_suffix(kept) and kept != new_client_suffix()
    assert with_pw.session_id(base, lambda: kept) == f"{base}-{kept}"
    assert other.session_id(base, lambda: kept) == with_pw.session_id(base, lambda: kept)
    assert "s3cret" not in with_pw.session_id(base, lambda: kept)
    anonymous = BrokerConfig.from_url("mqtt://127.0.0.1:1883")
    # a dev broker: nothing to guess (any client may connect), and no suffix drawn
    assert anonymous.session_id(base, lambda: pytest.fail("drawn")) == base


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_no_command_takes_a_password_as_a_flag(command, tmp_path, capsys):
    """A command line is visible to every local user: the MQTT password comes from the
    environment (--password-env names the variable), and a password in a broker URL is
    never echoed back."""
    argv = command_argv(command, tmp_path)
    assert cli_exit_code([*argv, "--broker", "mqtt://127.0.0.1:1", "--password", "hunter2"]) == 2
    refused = capsys.readouterr().err  # an earlier release's flag: what to do instead
    assert "--password is not taken" in refused and "PARKGUIDE_MQTT_PASSWORD" in refused
    assert "hunter2" not in refused  # and the password is not echoed into the logs
    for mistyped in (
        ["--pass", "hunter2"],
        ["--passwor=hunter2"],
        ["--pw", "hunter2"],
        ["--pass", "-Xk9hunter2"],  # a value that starts like a flag
        ["--pass", "-hunter2"],  # read as -h with an argument, which argparse quoted
        ["--pass", "correct hunter2 battery staple"],  # one argument with spaces
    ):
        assert cli_exit_code([*argv, "--broker", "mqtt://127.0.0.1:1", *mistyped]) == 2
        refused = capsys.readouterr().err  # argparse's "unrecognized arguments" echoed it
        told = ("unrecognized arguments: --pass", "--pw ***", "explicit argument '***'")
        assert any(t in refused for t in told), refused
        assert "unter2" not in refused, refused
    secret = "mqtt://gateway:Sup3rSecret@127.0.0.1:notaport"
    assert cli_exit_code([*argv, "--broker", secret]) != 0
    err = capsys.readouterr().err
    assert "bad port" in err and "gateway:***@" in err and "Sup3rSecret" not in err
    unset = ["--broker", "mqtt://127.0.0.1:1", "--password-env", "PG_TEST_UNSET_VAR"]
    assert cli_exit_code([*argv, *unset]) != 0
    assert "--password-env PG_TEST_UNSET_VAR: that variable is not set" in capsys.readouterr().err


def test_a_camera_url_with_its_password_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    from parkguide.cli import main

    base = ["edge", "camera", "--site", str(REPO / "examples" / "site.yaml"), "--camera", "cam-c"]
    base += ["--broker", "mqtt://127.0.0.1:1"]
    assert main([*base, "--source-env", "PG_CAM_SOURCE_UNSET"]) == 2
    assert "PG_CAM_SOURCE_UNSET: that variable is not set" in capsys.readouterr().err
    assert main(base) == 2
    assert "one of --source and --source-env" in capsys.readouterr().err
    monkeypatch.setenv("PG_CAM_SOURCE", str(tmp_path))  # a directory: refused, named
    assert main([*base, "--source-env", "PG_CAM_SOURCE"]) == 2
    assert "a directory, not a video file" in capsys.readouterr().err


def test_a_camera_password_given_with_source_is_warned_about_and_not_logged(tmp_path):
    """``--source`` with a login puts the camera's password where ``ps`` shows it: the agent
    runs (a refusal would stop a camera that works) but says to use ``--source-env``."""
    secret = "rtsp://admin:Cam3raSecret@127.0.0.1:1/stream1"
    argv = [sys.executable, "-m", "parkguide", "edge", "camera", "--camera", "cam-c"]
    argv += ["--site", str(REPO / "examples" / "site.yaml"), "--broker", "mqtt://127.0.0.1:1"]
    argv += ["--spool-dir", str(tmp_path), "--source"]
    for source, warned in ((secret, True), ("rtsp://127.0.0.1:1/stream1", False)):
        proc = subprocess.Popen([*argv, source], stderr=subprocess.PIPE, text=True, cwd=REPO)
        lines: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # up to the agent's start-up line, which follows the check
                lines.append(line)
                if "camera agent " in line or len(lines) > 40:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        text = "".join(lines)
        assert ("--source-env VAR instead" in text) == warned, text
        assert "Cam3raSecret" not in text, text
        if warned:
            assert "rtsp://***@127.0.0.1:1/stream1" in text, text


def test_the_api_user_reads_what_it_shows_and_not_the_gates_plates(either_acl):
    """The stand-alone API read every topic, arrivals with their plates included; it now
    reads only what its view subscribes to."""
    broker, users = either_acl
    api = _client(broker, "api", users["api"])
    got: queue.Queue = queue.Queue()
    api.on_message = lambda cl, ud, msg: got.put(msg.topic)
    api.subscribe(f"{topics.PREFIX}/{SITE}/#", qos=1)
    time.sleep(0.3)
    gw = _client(broker, "gateway", users["gateway"])
    assert _publish_reason(gw, topics.assignment(SITE, "north"), b"{}") in (0, 0x10)
    assert got.get(timeout=5) == topics.assignment(SITE, "north")
    # a gate's refused arrivals: the managers' alert (arrivals_refused)
    assert _publish_reason(gw, topics.arrival_refusal(SITE, "north"), b"{}") in (0, 0x10)
    assert got.get(timeout=5) == topics.arrival_refusal(SITE, "north")
    agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
    assert _publish_reason(agent, topics.edge_occupancy(SITE, "serial-bus-g"), b"{}") in (0, 0x10)
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)  # the agent's report is the gateway's to read, not the API's
    for c in (api, gw, agent):
        c.loop_stop()
        c.disconnect()


def test_the_api_closes_zones_and_only_the_gateway_hears_it(either_acl):
    """A manager's zone close goes from the API's user to the gateway's (control/zones, as
    control/spaces); an agent or a gate may not send one."""
    broker, users = either_acl
    gw = _client(broker, "gateway", users["gateway"])
    got: queue.Queue = queue.Queue()
    gw.on_message = lambda cl, ud, msg: got.put(msg.topic)
    gw.subscribe(topics.zone_control_all(SITE), qos=1)
    gw.subscribe(topics.space_control_all(SITE), qos=1)
    time.sleep(0.3)
    api = _client(broker, "api", users["api"])
    for topic in (topics.zone_control(SITE, "B1"), topics.space_control(SITE, "A-001")):
        assert _publish_reason(api, topic, b"{}") == 0
        assert got.get(timeout=5) == topic
    agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
    gate = _client(broker, "gate", users["gate"])
    for c in (agent, gate, gw):
        assert _publish_reason(c, topics.zone_control(SITE, "B1"), b"{}") == 0x87
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    for c in (api, gw, agent, gate):
        c.loop_stop()
        c.disconnect()


def test_a_gate_reads_its_answers_refusals_and_the_gateways_availability(either_acl):
    """A gate controller learns whether its arrival was refused and whether the gateway is
    up (no answer coming: guide by the signs at once); it reads no sign or agent topic."""
    broker, users = either_acl
    gate, got = _listening(broker, users, "gate")
    gw = _client(broker, "gateway", users["gateway"])
    answers = [
        topics.assignment(SITE, "north"),
        topics.arrival_refusal(SITE, "north"),
        topics.gateway_availability(SITE),
    ]
    # the sign's content is the signs' to read
    _reads_exactly(gw, got, [*answers, topics.display_content(SITE, "gate-north")], set(answers))
    assert _publish_reason(gate, topics.arrival(SITE, "north"), b"{}") in (0, 0x10)
    assert _publish_reason(gate, topics.arrival_refusal(SITE, "north"), b"{}") == 0x87
    for c in (gate, gw):
        c.loop_stop()
        c.disconnect()


def test_a_gate_cancels_an_arrival_and_only_the_gateway_hears_it(either_acl):
    """A gate takes back an arrival whose car left (entrances/{e}/cancel): the gateway reads
    it; the API or an agent may neither send one nor read the gates' (a cancel
    ends a car's hold: who may send one may empty the gates' holds)."""
    broker, users = either_acl
    cancel = topics.arrival_cancel(SITE, "north")
    gw = _client(broker, "gateway", users["gateway"])
    api = _client(broker, "api", users["api"])
    heard: dict[str, queue.Queue] = {"gateway": queue.Queue(), "api": queue.Queue()}
    for name, c in (("gateway", gw), ("api", api)):
        c.on_message = lambda cl, ud, msg, q=heard[name]: q.put(msg.topic)
        c.subscribe(topics.cancels_all(SITE), qos=1)
    time.sleep(0.3)
    gate = _client(broker, "gate", users["gate"])
    assert _publish_reason(gate, cancel, b"{}") == 0
    assert heard["gateway"].get(timeout=5) == cancel
    agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
    for c in (api, agent, gw):
        assert _publish_reason(c, cancel, b"{}") == 0x87
    with pytest.raises(queue.Empty):
        heard["gateway"].get(timeout=0.5)
    with pytest.raises(queue.Empty):
        heard["api"].get(timeout=0.1)  # the API shows the answers, not the gates' messages
    for c in (gw, api, gate, agent):
        c.loop_stop()
        c.disconnect()


def test_a_gate_login_per_entrance_acts_and_reads_at_its_own_entrance_only(either_acl):
    """With one login per entrance (username = entrance id) a gate announces and cancels
    arrivals at its own entrance only, and reads its own answers (plates included) and
    whether the gateway is up, not another gate's: a stolen gate login cannot empty the
    other gates' holds nor read their plates."""
    broker, users = either_acl
    gw, heard = _listening(
        broker, users, "gateway", topics.arrivals_all(SITE), topics.cancels_all(SITE)
    )
    north, got = _listening(broker, users, "north")
    for own in (topics.arrival(SITE, "north"), topics.arrival_cancel(SITE, "north")):
        assert _publish_reason(north, own, b"{}") == 0
        assert heard.get(timeout=5) == own
    for other in (topics.arrival(SITE, "east"), topics.arrival_cancel(SITE, "east")):
        assert _publish_reason(north, other, b"{}") == 0x87
    for not_a_gates in (
        topics.assignment(SITE, "north"),  # the gateway's answer, not the gate's to write
        topics.zone_control(SITE, "B1"),
        topics.edge_occupancy(SITE, "serial-bus-g"),
    ):
        assert _publish_reason(north, not_a_gates, b"{}") == 0x87
    with pytest.raises(queue.Empty):
        heard.get(timeout=0.5)
    own = [
        topics.assignment(SITE, "north"),
        topics.arrival_refusal(SITE, "north"),
        topics.gateway_availability(SITE),
    ]
    others = [  # east's answers and the signs are not north's to read
        topics.assignment(SITE, "east"),
        topics.arrival_refusal(SITE, "east"),
        topics.display_content(SITE, "gate-north"),
    ]
    _reads_exactly(gw, got, own + others, set(own))
    for c in (gw, north):
        c.loop_stop()
        c.disconnect()


def test_a_sign_login_per_display_reads_its_own_content_only(either_acl):
    broker, users = either_acl
    sign, got = _listening(broker, users, "gate-north")
    gw = _client(broker, "gateway", users["gateway"])
    own = [topics.display_content(SITE, "gate-north"), topics.gateway_availability(SITE)]
    others = [topics.display_content(SITE, "gate-east"), topics.assignment(SITE, "north")]
    _reads_exactly(gw, got, own + others, set(own))
    assert _publish_reason(sign, topics.display_content(SITE, "gate-north"), b"{}") == 0x87
    for c in (gw, sign):
        c.loop_stop()
        c.disconnect()


def test_make_passwords_keeps_passwords_off_command_lines(tmp_path):
    """mosquitto_passwd -b put each password on a command line, which every local user sees
    (ps): the script now gives it on stdin, and the file it writes holds that password."""
    real = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    argv_log = tmp_path / "argv"
    shim = shim_dir / "mosquitto_passwd"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    password = 'a pass with spaces, $HOME and "quotes"'
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["bash", str(DEPLOY / "make-passwords.sh"), str(pwfile), "gate-north"],
        env={"PATH": f"{shim_dir}:/usr/bin:/bin", "PASS_gate_north": password},
        check=True,
        capture_output=True,
    )
    assert argv_log.read_text().split() == [str(pwfile), "gate-north"]
    # the hash in the file is of exactly that password: mosquitto lets it in
    broker = MosquittoBroker(tmp_path, extra_conf=f"password_file {pwfile}\nuser root\n")
    broker.start()
    try:
        c = _client(broker, "gate-north", password)
        c.loop_stop()
        c.disconnect()
    finally:
        broker.stop()


@pytest.mark.parametrize(
    "command",
    [
        *BROKER_COMMANDS,
        ["edge", "serial", "--site", "S", "--bus", "bus-g", "--port", "/dev/null"],
        ["demo", "--site", "S", "--run-dir", "D", "--http", "127.0.0.1:PORT"],
    ],
)
def test_a_password_in_a_broker_url_on_the_command_line_is_refused(command, tmp_path, capsys):
    """``ps`` shows every command line: the password goes in the environment instead, and
    the refusal says which variable without echoing the password."""
    argv = command_argv(command, tmp_path)
    url = "mqtt://gateway:Sup3rSecret@127.0.0.1:1"
    assert cli_exit_code([*argv, "--broker", url]) == 2
    err = capsys.readouterr().err
    assert "PARKGUIDE_MQTT_PASSWORD" in err and "not taken" in err, err
    assert "Sup3rSecret" not in err and "gateway:***@" in err
    # a URL a program builds may still carry them (tests, the demo's own broker)
    built = BrokerConfig.from_url(url)
    assert (built.username, built.password) == ("gateway", "Sup3rSecret")


@pytest.mark.parametrize(
    "url", ["http://admin:INFLUXpw@127.0.0.1:1", "http://127.0.0.1:1/?token=INFLUXpw"]
)
def test_a_login_in_the_influx_url_is_refused_without_echoing_it(url, tmp_path, capsys):
    """The broker URL refused a password but --influx-url took one: it was logged at the
    writer's start and in every error, and stood in ``ps`` (the unit's ${INFLUX_URL})."""
    argv = command_argv(BROKER_COMMANDS[0], tmp_path)
    assert argv[0] == "gateway"
    influx = ["--broker", "mqtt://127.0.0.1:1", "--influx-url", url]
    influx += ["--influx-org", "o", "--influx-bucket", "b"]
    assert cli_exit_code([*argv, *influx]) == 2
    err = capsys.readouterr().err
    assert "INFLUX_TOKEN" in err and "not taken" in err, err
    assert "INFLUXpw" not in err and "http://127.0.0.1:1" in err


def test_an_agent_logged_in_under_another_id_says_the_broker_drops_its_reports(
    secured_broker, tmp_path, caplog
):
    """Defect: an agent logged in under a valid user that is not its agent id said
    "connected", and the ACL dropped everything it sent without a word (MQTT 3.1.1 has no
    refusal for a publish): zones stayed unknown. Now it warns at start and, as its own
    ``online`` never comes back, logs an error; under its own id it says neither."""
    broker, users = secured_broker
    caplog.set_level(logging.INFO, logger="edge.publisher")
    url = f"mqtt://127.0.0.1:{broker.port}"
    wrong = ReportPublisher(
        BrokerConfig.from_url(url, "serial-bus-b1", users["serial-bus-b1"]),
        SITE, "serial-bus-g", "bus-g", spool_dir=tmp_path / "wrong",
    )  # fmt: skip
    right = ReportPublisher(
        BrokerConfig.from_url(url, "serial-bus-g", users["serial-bus-g"]),
        SITE, "serial-bus-g", "bus-g", spool_dir=tmp_path / "right",
    )  # fmt: skip
    gw, got = _listening(broker, users, "gateway", f"{topics.PREFIX}/{SITE}/edge/+/availability")
    try:
        wrong.start()
        right.start()
        deadline = time.monotonic() + ECHO_WAIT_S + 5
        while time.monotonic() < deadline and not any(
            r.levelno == logging.ERROR for r in caplog.records
        ):
            time.sleep(0.1)
        time.sleep(1.5)  # the right one's check is over too
        assert wrong.connected and right.connected
    finally:
        wrong.stop(flush_timeout_s=1)
        right.stop(flush_timeout_s=1)
        gw.loop_stop()
        gw.disconnect()

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    warnings = said(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "MQTT username 'serial-bus-b1' is not this agent's id 'serial-bus-g'" in warnings[0]
    assert "PARKGUIDE_MQTT_USERNAME=serial-bus-g" in warnings[0]
    errors = said(logging.ERROR)
    assert len(errors) == 1, errors
    assert "never passed this agent's own 'online'" in errors[0]
    assert "Most likely it drops this agent's messages" in errors[0]
    assert "its login 'serial-bus-b1' may publish only under its own agent id" in errors[0]
    # what the gateway heard: the right one's online and offline, nothing of the wrong one's
    seen = []
    with contextlib.suppress(queue.Empty):
        while True:
            seen.append(got.get(timeout=0.5))
    assert seen == [topics.edge_availability(SITE, "serial-bus-g")] * 2


class _SlowLink:
    """A TCP proxy that delivers every chunk ``delay_s`` late, in order, both ways: a
    broker over a slow or congested link."""

    def __init__(self, port: int, delay_s: float):
        import socket
        import threading

        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.socks += [client, upstream]
                self._pipe(client, upstream)
                self._pipe(upstream, client)

    def _pipe(self, src, dst) -> None:
        import threading

        late: queue.Queue = queue.Queue()

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    late.put((time.monotonic() + self.delay_s, data))
            late.put((0.0, b""))

        def write() -> None:
            with contextlib.suppress(OSError):
                while True:
                    due, data = late.get()
                    if not data:
                        dst.close()
                        return
                    time.sleep(max(0.0, due - time.monotonic()))
                    dst.sendall(data)

        for fn in (read, write):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def test_an_agent_over_a_slow_link_does_not_say_the_broker_drops_its_reports(
    secured_broker, tmp_path, caplog, monkeypatch
):
    """Defect: the wait for the agent's own ``online`` started at the connect, so over a
    link slower than the wait (here 1.2 s each way against a 1 s wait) a right login was
    told the broker dropped everything. It now starts at the broker's PUBACK."""
    import edge.publisher as publisher

    monkeypatch.setattr(publisher, "ECHO_WAIT_S", 1.0)
    broker, users = secured_broker
    link = _SlowLink(broker.port, 1.2)
    caplog.set_level(logging.INFO, logger="edge.publisher")
    agent = ReportPublisher(
        BrokerConfig.from_url(f"mqtt://127.0.0.1:{link.port}", "serial-bus-g", users["serial-bus-g"]),
        SITE, "serial-bus-g", "bus-g", spool_dir=tmp_path / "slow",
    )  # fmt: skip
    try:
        agent.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not agent.connected:
            time.sleep(0.1)
        assert agent.connected
        time.sleep(5)  # the echo and the PUBACK come 2.4 s after the online: then 1 s more
    finally:
        agent.stop(flush_timeout_s=1)
        link.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == []


def _gateway_log(
    broker, user: str, password: str | None, tmp_path: Path, until: str, then_s: float = 0.0
) -> str:
    """``parkguide gateway`` on the example site under this login, until its log says
    ``until`` (60 s at most: a loaded machine starts it slowly) and ``then_s`` more: its log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARKGUIDE_MQTT_")}
    env.update(PYTHONUNBUFFERED="1", PARKGUIDE_MQTT_USERNAME=user)
    if password is not None:
        env["PARKGUIDE_MQTT_PASSWORD"] = password
    log = tmp_path / f"gateway-{user}-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            parkguide_cmd(
                "gateway", "--site", str(EXAMPLE_SITE), "--db", str(tmp_path / f"{user}.db"),
                "--broker", f"mqtt://127.0.0.1:{broker.port}",
            ),
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while until not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(then_s)
        finally:
            stop_process(proc)
    return log.read_text()


def test_a_gateway_under_another_services_login_says_the_broker_drops_its_output(
    secured_broker, tmp_path
):
    """Defect: gateway.env with api.env's login pasted in: the gateway said "connected"
    and ran "healthy" while the ACL dropped every zone, sign and answer it published (MQTT
    3.1.1 has no refusal for a publish). It now checks that its own 'online' comes back.
    And a login whose password is missing said only "Not authorized", never naming it."""
    broker, users = secured_broker
    wrong = _gateway_log(broker, "api", users["api"], tmp_path, "never passed")
    assert "never passed this gateway's own 'online'" in wrong, wrong[-3000:]
    assert "PARKGUIDE_MQTT_USERNAME" in wrong and "(it is 'api')" in wrong
    # the right login, as long again after it runs as the wrong one took to be told
    right = _gateway_log(
        broker, "gateway", users["gateway"], tmp_path, "running", 2 * ECHO_QUIET_S + 1
    )
    assert "running" in right and "never passed" not in right, right[-3000:]
    nopw = _gateway_log(broker, "gateway", None, tmp_path, "refused the connection")
    assert "refused the connection" in nopw, nopw[-3000:]
    assert "user 'gateway' was given without a password" in nopw
    assert "PARKGUIDE_MQTT_PASSWORD" in nopw


def test_the_site_acl_keeps_each_login_to_its_own_topics_of_its_own_site(tmp_path):
    """Under the shipped ACL's patterns a sign's login could write edge/<its name>/… of any
    site id, retained, as often as it liked (60 messages of 900 KB filled the broker's
    memory), and an agent's wrote under another site id. The site's own ACL has none of
    that."""
    with _secured(tmp_path, _site_acl(tmp_path)) as (broker, users):
        gw, got = _listening(broker, users, "gateway", f"{topics.PREFIX}/{SITE}/edge/#")
        sign = _client(broker, "gate-north", users["gate-north"])
        agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
        gate = _client(broker, "north", users["north"])
        refused = [
            (sign, topics.edge_health(SITE, "gate-north")),
            (sign, topics.edge_health("junk1", "gate-north")),
            (gate, topics.edge_availability(SITE, "north")),
            (agent, topics.edge_occupancy("donghu", "serial-bus-g")),
            (gate, topics.arrival("donghu", "north")),
        ]
        for client, topic in refused:
            assert _publish_reason(client, topic, b"{}") == 0x87, topic  # Not authorized
        own = topics.edge_occupancy(SITE, "serial-bus-g")
        assert _publish_reason(agent, own, b"{}") == 0
        assert got.get(timeout=5) == own
        with pytest.raises(queue.Empty):
            got.get(timeout=0.5)  # nothing refused reached the gateway
        for c in (gw, sign, agent, gate):
            c.loop_stop()
            c.disconnect()


def test_site_acl_refuses_a_site_whose_ids_share_a_login(tmp_path):
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    shared = tmp_path / "site.yaml"
    shared.write_text(text.replace("id: gate-north", "id: north", 1), encoding="utf-8")
    done = subprocess.run(
        parkguide_cmd("site", "acl", str(shared)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and not done.stdout, done.stderr
    assert "broker login 'north' would be" in done.stderr
