"""The site configuration: the example is valid, and every problem names the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eaio.config import load_config
from eaio.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["site.example.yaml", "site.docker.yaml"])
def test_shipped_site_files_load(name: str) -> None:
    cfg = load_config(ROOT / "config" / name)
    assert {d.id for d in cfg.devices} == {"ahu1-ctrl", "zones-ctrl", "plant-ctrl", "main-meter", "iot-gw",
                                           "zone4-vav", "plant-plc"}
    assert len(cfg.devices_for("modbus")) == 4
    assert len(cfg.devices_for("bacnet")) == 1
    assert len(cfg.devices_for("opcua")) == 1
    assert len(cfg.points()) == 78
    assert cfg.sim.mqtt is not None
    assert cfg.sim.mqtt.device == "iot-gw"
    assert all(p.device_id for p in cfg.points())
    zone_temps = [p for p in cfg.points() if p.brick == "Zone_Air_Temperature_Sensor"]
    assert sorted(p.zone for p in zone_temps) == ["zone1", "zone2", "zone3", "zone4"]  # type: ignore[type-var]
    for p in cfg.points():
        if p.writable and not p.is_binary:
            assert p.write_bounds is not None
            assert p.write_bounds.low is not None


def _device(**point: object) -> dict[str, object]:
    base: dict[str, object] = {"id": "p.one", "address": {"register": 1}}
    base.update(point)
    return {"id": "dev1", "protocol": "modbus", "points": [base]}


def _problems(tmp_path: Path, raw: object) -> list[tuple[str, str]]:
    path = tmp_path / "site.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert all(line.startswith(str(path)) for line in info.value.message.splitlines())
    return info.value.problems


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"devices": [_device(address={"register": 70000})]}, "devices[0].points[0].address.register", "65535"),
        ({"devices": [_device(address={"register": 1, "type": "float128"})]}, "devices[0].points[0].address.type", ""),
        ({"devices": [_device(address={"table": "coil", "register": 1, "type": "int16"})]},
         "devices[0].points[0].address", "bool"),
        ({"devices": [_device(id="Bad Id")]}, "devices[0].points[0].id", "lower-case"),
        ({"devices": [_device(colour="red")]}, "devices[0].points[0].colour", "unknown field"),
        ({"devices": [_device(limits={"low": 10, "high": 0})]}, "devices[0].points[0].limits", "must not be above"),
        ({"devices": [{"id": "d", "protocol": "profibus"}]}, "devices[0].protocol", "modbus"),
        ({"devices": [_device(writable=True)]}, "devices[0].points[0].write_bounds", "needs write_bounds"),
        ({"devices": [_device(writable=True, limits={"low": 0, "high": 10}, write_bounds={"low": 0, "high": 20})]},
         "devices[0].points[0].write_bounds", "inside limits"),
        ({"devices": [_device(write_bounds={"low": 0, "high": 1})]}, "devices[0].points[0].write_bounds",
         "not writable"),
        ({"sim": {"speed": -1}}, "sim.speed", "greater than 0"),
        ({"servers": {"zigbee": {}}}, "servers.zigbee", "unknown protocol"),
        # The pipeline's new sections: each problem at its own field.
        ({"storage": {"backend": "influxdb"}}, "storage", "needs an 'influxdb' section"),
        ({"storage": {"backend": "influxdb", "influxdb": {"version": 2, "url": "http://x:8086"}}},
         "storage.influxdb", "needs 'token' and 'org'"),
        ({"storage": {"influxdb": {"version": 1, "url": "ftp://x"}}}, "storage.influxdb.url", "pattern"),
        ({"storage": {"buffer": {"batch_size": 10_000}}}, "storage.buffer.batch_size", "5000"),
        ({"events": {"readings_every_s": -1}}, "events.readings_every_s", "greater than or equal to 0"),
        ({"energy": {"demand_interval_s": 10}}, "energy.demand_interval_s", "greater than or equal to 60"),
        ({"devices": [_device(rules={"max_rate_per_h": -1})]}, "devices[0].points[0].rules.max_rate_per_h", ""),
        ({"devices": [_device(rules={"expected": {"low": 5, "high": 1}})]}, "devices[0].points[0].rules.expected",
         "must not be above"),
        ({"devices": [{"id": "m", "protocol": "modbus", "points": [
            {"id": "meter.energy", "kind": "energy", "unit": "kWh", "address": {"register": 0, "type": "uint32"}},
            {"id": "meter.energy.interval", "kind": "energy", "address": {"register": 2, "type": "uint32"}}]}]},
         "devices[0].points[1].id", "derived energy reading of 'meter.energy'"),
        ({"agent": {"approvals": [{"kinds": ["setpoint"], "policy": "sometimes"}]}}, "agent.approvals[0].policy", ""),
        ({"agent": {"llm": {"max_steps": 0}}}, "agent.llm.max_steps", "greater than or equal to 1"),
    ],
)
def test_problem_names_the_field(tmp_path: Path, raw: object, path: str, fragment: str) -> None:
    problems = _problems(tmp_path, raw)
    assert path in [p for p, _ in problems], problems
    assert fragment in " ".join(m for p, m in problems if p == path)


def test_duplicates_and_overlaps_are_reported_together(tmp_path: Path) -> None:
    dev = {
        "id": "dev1",
        "protocol": "modbus",
        "points": [
            {"id": "a.x", "address": {"register": 10, "type": "float32"}},
            {"id": "a.y", "address": {"register": 11}},  # inside a.x's two registers
            {"id": "a.x", "address": {"register": 20}},
        ],
    }
    problems = dict(_problems(tmp_path, {"devices": [dev, dict(dev, points=[])]}))
    assert "overlap" in problems["devices[0].points[1].address.register"]
    assert "duplicate point id 'a.x'" in problems["devices[0].points[2].id"]
    assert "duplicate device id 'dev1'" in problems["devices[1].id"]


def test_yaml_errors_give_line_and_column(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "devices: [\n  {id: x\n")
    assert problems[0][0].startswith("line ")
    assert "not valid YAML" in problems[0][1]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"data_dir": "from-file", "agent": {"interval_s": 30}}))
    monkeypatch.setenv("EAIO_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("EAIO_AGENT__INTERVAL_S", "7")
    monkeypatch.setenv("EAIO_AGENT__SERVERS", '[{"name": "modbus", "url": "http://127.0.0.1:1/mcp"}]')
    cfg = load_config(path)
    assert cfg.data_dir == tmp_path / "from-env"
    assert cfg.agent.interval_s == 7
    assert cfg.agent.servers
    assert cfg.agent.servers[0].url == "http://127.0.0.1:1/mcp"
    assert cfg.agent.comfort_band_c == 1.0  # untouched nested defaults survive a partial override


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "eaio", "check-config", str(ROOT / "config/site.example.yaml")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "78 points" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"devices": [_device(address={"register": 70000})]}))
    res = subprocess.run([sys.executable, "-m", "eaio", "check-config", str(bad)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert f"{bad}: devices[0].points[0].address.register:" in res.stderr
