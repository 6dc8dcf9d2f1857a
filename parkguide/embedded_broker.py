"""An embedded MQTT broker (amqtt) for the one-command demo only.

Production uses Mosquitto, EMQX or HiveMQ (deploy/mosquitto/). This exists so
``parkguide demo`` needs nothing installed: ``python -m parkguide.embedded_broker
--port N`` serves anonymous MQTT on 127.0.0.1 until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import warnings

log = logging.getLogger(__name__)


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 200}},
        "auth": {"allow-anonymous": True},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    log.info("embedded broker listening on %s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s broker: %(message)s"
    )
    logging.getLogger(__name__).setLevel(logging.INFO)
    # amqtt logs every connection at INFO and warns about its own deprecated plugin loading
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
