"""A burst larger than ingest's backlog is slowed down, never dropped (QoS 1 through a real broker)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import paho.mqtt.client as mqtt
import pytest
import yaml

from eaio.config import load_config
from eaio.pipeline.ingest import Ingest

FIELDS = 50
MESSAGES = 200


def _site(tmp_path: Path, port: int) -> Path:
    raw = {
        "site": {"id": "burst"},
        "data_dir": str(tmp_path / "data"),
        "devices": [{
            "id": "burst-gw", "protocol": "mqtt",
            "connection": {"host": "127.0.0.1", "port": port, "client_id": "burst-test"},
            "subscriptions": [{"topic": "burst/+/v", "qos": 1, "format": "json",
                               "fields": {f"f{k}": f"burst.{{1}}.f{k}" for k in range(FIELDS)}}],
            "points": [{"id": f"burst.p{i}.f{k}"} for i in range(4) for k in range(FIELDS)],
        }],
        "ingest": {"batch_size": 100},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.anyio
async def test_a_burst_bigger_than_the_backlog_is_stored_whole(tmp_path: Path, mosquitto: Any) -> None:
    cfg = load_config(_site(tmp_path, mosquitto.port))
    want = MESSAGES * FIELDS  # 10,000 readings through a backlog of 250
    async with Ingest(cfg, backlog_limit=250) as ingest:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="burst-pub")
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            infos = [pub.publish(f"burst/p{i % 4}/v", json.dumps({f"f{k}": i + k for k in range(FIELDS)}), qos=1)
                     for i in range(MESSAGES)]
            for info in infos:
                info.wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()
        deadline = time.monotonic() + 30
        while ingest.readings_stored < want:
            assert time.monotonic() < deadline, f"{ingest.readings_stored} of {want} stored"
            await anyio.sleep(0.05)
        stats = ingest.stats()
    assert stats.readings_stored == want
    assert stats.dropped == 0
