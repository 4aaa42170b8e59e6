"""The InfluxDB 2.x store, through the real influxdb-client, against a WIRE-LEVEL STAND-IN.

No InfluxDB 2 server can be installed here (Debian ships 1.6.7, and influxdb-client's v2 API
cannot write to a 1.x server), so these tests run a real HTTP server on 127.0.0.1 that plays
InfluxDB 2's part of the conversation and checks what the store sends:

- writes: ``POST /api/v2/write``, ``org`` and ``bucket`` parameters, ``precision=us`` (``ns`` for
  dead letters), the ``Authorization: Token <token>`` header, and the line-protocol body, parsed
  line by line (tags, fields and timestamps are compared exactly with what the schema says);
- queries: ``POST /api/v2/query?org=``, the Flux text (bucket, measurement and site filters, the
  point, the range, pivot / window / count as the store must ask), answered with annotated CSV as
  InfluxDB 2 does, computed from the lines it received, so ``latest``, ``history`` and ``counts``
  run end-to-end through influxdb-client's own CSV parser and are compared with SqliteStore;
- failures: 401 (a wrong token), 500, 404 (no bucket), 400 (field type conflict) and a server
  that is down, each mapped to the right ``StoreError.retryable``.

What the stand-in cannot show is how a real InfluxDB 2 evaluates the Flux; the 1.x tests
(test_pipeline_influx_v1.py) cover the same schema against a real server.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import free_port
from eaio.config import InfluxSettings
from eaio.errors import StoreError
from eaio.models import DeadLetter, ReadingBatch, from_us
from eaio.pipeline import SqliteStore
from eaio.pipeline.influx_v2 import InfluxV2Store, flux_string
from test_pipeline_influx_v1 import POINTS, READINGS, SITE, assert_same, at

pytestmark = pytest.mark.anyio

TOKEN = "s3cr3t-token=="
ORG = "acme org"
BUCKET = "eaio/telemetry"


# -- line protocol, parsed the way InfluxDB does -------------------------------------------------
def _split(text: str, seps: str) -> list[str]:
    """Split on unescaped separators outside double quotes; escapes are kept for the caller."""
    out, cur, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch in seps and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _unescape_tag(text: str) -> str:
    return re.sub(r"\\([,= ])", r"\1", text)


def _field_value(text: str) -> Any:
    if text.startswith('"'):
        assert text.endswith('"'), text
        return re.sub(r'\\(["\\])', r"\1", text[1:-1])
    assert not text.endswith("i"), f"integer field {text}: the schema writes floats only"
    return float(text)


def parse_lines(body: str) -> list[tuple[str, dict[str, str], dict[str, Any], int]]:
    rows = []
    for line in _split(body, "\n"):
        if not line:
            continue
        key, fields, ts = _split(line, " ")
        head, *tags = _split(key, ",")
        tag_pairs = [tuple(_split(t, "=")) for t in tags]
        assert [k for k, _ in tag_pairs] == sorted(k for k, _ in tag_pairs), f"tags not sorted: {line}"
        parsed_fields = {}
        for f in _split(fields, ","):
            k, v = f.split("=", 1)
            parsed_fields[k] = _field_value(v)
        rows.append((head, {_unescape_tag(k): _unescape_tag(v) for k, v in tag_pairs}, parsed_fields, int(ts)))
    return rows


# -- annotated CSV, as InfluxDB 2 answers a query ------------------------------------------------
def rfc3339(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def annotated_csv(tables: list[tuple[str, list[tuple[str, str, bool]], list[list[Any]]]]) -> str:
    """Each table: (result name, [(column, datatype, in group key)], rows); one block per table."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for table_id, (result, columns, rows) in enumerate(tables):
        w.writerow(["#datatype", "string", "long", *(c[1] for c in columns)])
        w.writerow(["#group", "false", "false", *("true" if c[2] else "false" for c in columns)])
        w.writerow(["#default", result, "", *("" for _ in columns)])
        w.writerow(["", "result", "table", *(c[0] for c in columns)])
        for row in rows:
            w.writerow(["", "", table_id, *("" if v is None else v for v in row)])
        buf.write("\r\n")
    return buf.getvalue()


TAGS = ["brick", "device", "equip", "kind", "point", "quality", "site", "unit", "zone"]


@dataclass
class StandIn:
    """InfluxDB 2's HTTP API, as far as the store uses it; see the module docstring."""

    port: int = field(default_factory=free_port)
    # (measurement, sorted tags, time in ns) -> fields: a point written again overwrites, as InfluxDB does.
    points: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fail_next: tuple[int, dict[str, str]] | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, answer = stand_in.handle(self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        as_json = {"Content-Type": "application/json"}
        if headers.get("Authorization") != f"Token {TOKEN}":
            return 401, as_json, b'{"code":"unauthorized","message":"unauthorized access"}'
        if self.fail_next is not None:
            (status, answer), self.fail_next = self.fail_next, None
            return status, as_json, json.dumps(answer).encode()
        self.check(params.get("org") == ORG, f"org {params.get('org')!r}")
        if url.path == "/api/v2/write":
            self.check(params.get("bucket") == BUCKET, f"bucket {params.get('bucket')!r}")
            precision = params.get("precision")
            self.check(precision in ("us", "ns"), f"precision {precision!r}")
            self.writes.append({"params": params, "body": body.decode()})
            for m, tags, fields, ts in parse_lines(body.decode()):
                ns = ts * 1000 if precision == "us" else ts
                self.points.setdefault((m, tuple(sorted(tags.items())), ns), {}).update(fields)
            return 204, {}, b""
        if url.path == "/api/v2/query":
            request = json.loads(body)
            # InfluxDB 2 takes a query without "type" as Flux (influxdb-client leaves it out).
            self.check(request.get("type", "flux") == "flux", f"query type {request.get('type')!r}")
            self.check("datatype" in request.get("dialect", {}).get("annotations", []), "no datatype annotation")
            flux = request["query"]
            self.queries.append(flux)
            return 200, {"Content-Type": "text/csv; charset=utf-8"}, self.answer(flux).encode()
        self.problems.append(f"unexpected path {url.path}")
        return 404, as_json, b'{"code":"not found","message":"path not found"}'

    # -- queries -----------------------------------------------------------------------------
    def rows(self, flux: str) -> list[dict[str, Any]]:
        """The readings rows a query's from/range/filter select, pivoted (one dict per point)."""
        self.check(f"from(bucket: {flux_string(BUCKET)})" in flux, "bucket in from()")
        self.check(f'r._measurement == "readings" and r.site == {flux_string(SITE)}' in flux,
                   "measurement and site filter")
        lo, hi = 0, 2**62
        if m := re.search(r"range\(start: time\(v: (\d+)\), stop: time\(v: (\d+)\)\)", flux):
            lo, hi = int(m[1]), int(m[2])
        else:
            self.check("range(start: 1970-01-01T00:00:00Z, stop: 2262-04-11T00:00:00Z)" in flux, "range")
        point_ids: set[str] | None = None
        if m := re.search(r'r\.point == ("(?:[^"\\]|\\.)*")', flux):
            point_ids = {json.loads(m[1])}
        elif m := re.search(r"contains\(value: r\.point, set: \[(.*?)\]\)", flux):
            point_ids = set(json.loads(f"[{m[1]}]"))
        out = []
        for (meas, tags, ns), fields in self.points.items():
            t = dict(tags)
            if meas != "readings" or t.get("site") != SITE or not lo <= ns < hi:
                continue
            if point_ids is not None and t["point"] not in point_ids:
                continue
            out.append({**t, **fields, "_time": ns // 1000})
        return sorted(out, key=lambda r: r["_time"])

    def answer(self, flux: str) -> str:
        rows = self.rows(flux)
        if "aggregateWindow" in flux:
            return self.buckets(flux, rows)
        pivot = '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        self.check(pivot in flux, "pivot to whole rows")
        if 'count(column: "point")' in flux:
            per: dict[str, int] = {}
            for r in rows:
                per[r["quality"]] = per.get(r["quality"], 0) + 1
            cols = [("quality", "string", True), ("point", "long", False)]
            return annotated_csv([("_result", cols, [[q, n]]) for q, n in sorted(per.items())])
        cols = [("_time", "dateTime:RFC3339", False), ("_measurement", "string", False),
                *((t, "string", False) for t in TAGS),
                ("detail", "string", False), ("reasons", "string", False), ("value", "double", False)]

        def line(r: dict[str, Any]) -> list[Any]:
            return [rfc3339(r["_time"]), "readings", *(r.get(t) for t in TAGS),
                    r.get("detail"), r.get("reasons"), r.get("value")]

        if "limit(n: 1)" in flux:
            self.check('|> group(columns: ["point"])' in flux and 'sort(columns: ["_time"], desc: true)' in flux,
                       "latest: group by point, newest first")
            newest: dict[str, dict[str, Any]] = {}
            for r in rows:
                newest[r["point"]] = r
            return annotated_csv([("_result", cols, [line(r)]) for _, r in sorted(newest.items())])
        self.check('|> group()\n  |> sort(columns: ["_time"])' in flux, "history: one table in time order")
        return annotated_csv([("_result", cols, [line(r) for r in rows])]) if rows else "\r\n"

    def buckets(self, flux: str, rows: list[dict[str, Any]]) -> str:
        m = re.search(r'aggregateWindow\(every: (\d+)us, createEmpty: false, timeSrc: "_start", fn: (\w+)\)', flux)
        self.check(m is not None, "aggregateWindow(every: <n>us, createEmpty: false, timeSrc: \"_start\", fn: ...)")
        self.check('r.quality == "good" and r._field == "value"' in flux, "good values only")
        self.check('yield(name: "count")' in flux, "a count result beside the aggregate")
        assert m is not None
        width, fn = int(m[1]), m[2]
        lo = int(re.search(r"range\(start: time\(v: (\d+)\)", flux)[1]) // 1000  # type: ignore[index]
        windows: dict[int, list[float]] = {}
        for r in rows:
            if r["quality"] == "good" and r.get("value") is not None:
                windows.setdefault(r["_time"] - r["_time"] % width, []).append(r["value"])
        aggs = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max, "last": lambda v: v[-1],
                "count": len}
        tables = []
        for result, f, dtype in (("agg", fn, "long" if fn == "count" else "double"), ("count", "count", "long")):
            cols = [("_time", "dateTime:RFC3339", False), ("_value", dtype, False)]
            # Flux cuts the first window at the range start: its _start is the range start.
            data = [[rfc3339(max(start, lo)), aggs[f](vs)] for start, vs in sorted(windows.items())]
            if data:
                tables.append((result, cols, data))
        return annotated_csv(tables) if tables else "\r\n"


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.problems == [], server.problems


def settings(url: str, token: str = TOKEN) -> InfluxSettings:
    return InfluxSettings(version=2, url=url, token=token, org=ORG, bucket=BUCKET)


@pytest.fixture
async def pair(stand_in: StandIn, tmp_path: Path) -> Any:
    async with InfluxV2Store(settings(stand_in.url), SITE, POINTS) as influx, SqliteStore(tmp_path / "s.db") as sql:
        assert await influx.write(ReadingBatch.from_readings(READINGS)) == len(READINGS)
        assert await sql.write(READINGS) == len(READINGS)
        yield influx, sql


async def test_write_request_and_body(pair: Any, stand_in: StandIn) -> None:
    (write,) = stand_in.writes  # one request for the whole batch
    assert write["params"] == {"org": ORG, "bucket": BUCKET, "precision": "us"}
    lines = parse_lines(write["body"])
    assert len(lines) == len(READINGS)
    first = lines[0]
    assert first == ("readings", {"brick": "Zone_Air_Temperature_Sensor", "device": "zones-ctrl",
                                  "kind": "temperature", "point": "zone1.temp", "quality": "good", "site": SITE,
                                  "unit": "deg C", "zone": "zone1"}, {"value": 20.0}, 1784116800000000)
    failed = lines[5]  # value None: no value field; reasons comma-joined; detail with quotes and a newline
    assert failed[2] == {"reasons": "comm_failure,stale",
                         "detail": 'device_offline: "zones-ctrl" said \\ no\nsecond line'}
    assert lines[7][2] == {"value": 1200.0}  # int -> float
    assert lines[8][1]["quality"] == "uncertain"
    assert lines[8][2] == {"value": 1300.0, "reasons": "spike"}
    assert [ln[2] for ln in lines[12:14]] == [{"value": 1.0}, {"value": 0.0}]  # bools
    assert "unit" not in lines[12][1]  # empty unit: no tag
    assert lines[14][1] == {"device": "gw 2,x=y", "point": "odd.point", "quality": "good", "site": SITE,
                            "unit": "a,b=c d"}  # unknown point: no kind / brick / zone / equip
    assert lines[15][2] == {"reasons": "protocol_status:nan"}  # NaN: no value field
    assert [ln[3] for ln in lines] == [int(r.ts.timestamp() * 1_000_000) for r in READINGS]


async def test_latest_history_counts_match_sqlite(pair: Any, stand_in: StandIn) -> None:
    influx, sql = pair
    assert_same(await influx.latest(), await sql.latest())
    some = ["zone1.rh", "nope", "zone1.temp", "ahu1.fan_cmd"]
    assert_same(await influx.latest(some), await sql.latest(some))
    assert 'contains(value: r.point, set: ["zone1.rh", "nope", "zone1.temp", "ahu1.fan_cmd"])' in stand_in.queries[-1]
    for point_id in ("zone1.temp", "ahu1.flow", "ahu1.fan_cmd", "odd.point", "nope"):
        assert_same(await influx.history(point_id, at(0), at(1500)), await sql.history(point_id, at(0), at(1500)))
    assert f"range(start: time(v: {1784116800000000 * 1000}), stop: time(v: {1784118300000000 * 1000}))" \
        in stand_in.queries[-1]
    assert await influx.counts() == await sql.counts()
    # The same batch again is the same points (same series key and time).
    await influx.write(READINGS)
    assert await influx.counts() == await sql.counts()
    assert len(stand_in.points) == len(READINGS)


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "count"])
async def test_buckets_match_sqlite(pair: Any, agg: str) -> None:
    influx, sql = pair
    for lo in (-900, 450):  # a range that starts inside a bucket still reports the aligned start
        got = await influx.history("zone1.temp", at(lo), at(3600), bucket_s=900, agg=agg)  # type: ignore[arg-type]
        want = await sql.history("zone1.temp", at(lo), at(3600), bucket_s=900, agg=agg)  # type: ignore[arg-type]
        assert [(b.start, b.count) for b in got] == [(b.start, b.count) for b in want]  # type: ignore[union-attr]
        assert [b.value for b in got] == pytest.approx([b.value for b in want])  # type: ignore[union-attr]
    assert [b.start for b in got] == [at(0), at(900)]  # type: ignore[union-attr]


async def test_dead_letter(stand_in: StandIn) -> None:
    async with InfluxV2Store(settings(stand_in.url), SITE, POINTS) as store:
        await store.add_dead_letter(DeadLetter(received_at=at(5), source="mqtt:gw", topic="t/x",
                                               reason="malformed", payload=b"\xff{"))
    (write,) = stand_in.writes
    assert write["params"]["precision"] == "ns"
    ((m, tags, fields, ts),) = parse_lines(write["body"])
    assert (m, tags) == ("dead_letter", {"site": SITE, "source": "mqtt:gw"})
    assert fields == {"reason": "malformed", "detail": "", "topic": "t/x", "payload": "/3s="}
    assert ts // 1000 == int(at(5).timestamp() * 1_000_000)


@pytest.mark.parametrize(("status", "message", "retryable"), [
    (500, "internal error", True),
    (503, "unavailable", True),
    (404, 'bucket "eaio/telemetry" not found', True),
    (403, "insufficient permissions for write", True),
    (400, 'partial write: field type conflict: input field "value" on measurement "readings" is type float, '
          "already exists as type string dropped=16", False),
    (413, "request too large", False),
])
async def test_http_failures(stand_in: StandIn, status: int, message: str, retryable: bool) -> None:
    async with InfluxV2Store(settings(stand_in.url), SITE, POINTS) as store:
        stand_in.fail_next = (status, {"code": "x", "message": message})
        with pytest.raises(StoreError) as info:
            await store.write(READINGS)
    assert info.value.retryable is retryable
    assert f"HTTP {status}" in str(info.value)
    assert message in str(info.value)


async def test_wrong_token_is_retryable(stand_in: StandIn) -> None:
    async with InfluxV2Store(settings(stand_in.url, token="wrong"), SITE, POINTS) as store:
        with pytest.raises(StoreError) as info:
            await store.write(READINGS[:1])
        assert info.value.retryable is True
        assert "HTTP 401" in str(info.value)
        with pytest.raises(StoreError) as info:
            await store.latest()
        assert info.value.retryable is True
    assert stand_in.points == {}


async def test_server_down_is_retryable(stand_in: StandIn) -> None:
    async with InfluxV2Store(settings(stand_in.url), SITE, POINTS) as store:
        await store.write(READINGS[:1])
        stand_in.stop()
        with pytest.raises(StoreError) as info:
            await store.write(READINGS[1:2])
        assert info.value.retryable is True
        assert "cannot reach" in str(info.value)
    unopened = InfluxV2Store(settings(stand_in.url), SITE)
    with pytest.raises(StoreError, match="not open"):
        await unopened.counts()


def test_flux_string_escapes() -> None:
    assert flux_string('a"b\\c\nd${x}') == '"a\\"b\\\\c\\nd\\${x}"'


def test_needs_token_and_org() -> None:
    s = InfluxSettings(version=1, url="http://127.0.0.1:1")  # a v1 block has neither
    with pytest.raises(StoreError, match="token"):
        InfluxV2Store(s, SITE)


