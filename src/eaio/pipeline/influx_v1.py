"""InfluxDB 1.x over its HTTP API: line protocol to /write, InfluxQL to /query. Implements
``pipeline.base.Store`` with the same answers as ``SqliteStore`` (schema: ``lineproto.py``).

For the 1.x servers many sites still run (Debian ships 1.6.7). One HTTP request per ``write``
(the store-and-forward buffer in front hands over at most 5,000 readings), and every failure is
a ``StoreError`` whose ``retryable`` tells the buffer whether to keep the data and try again
(server down, 5xx, credentials, missing database) or to set it aside (400 bad line or field type
conflict, 413 body too large: the same bytes would fail forever).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Self

import httpx2

from ..config import InfluxSettings
from ..errors import StoreError
from ..models import DeadLetter, Point, Reading, from_us, to_us
from .base import Aggregate, Bucket
from .influx_base import InfluxStoreBase
from .lineproto import reading_from_row
from .sqlite import StoreCounts

__all__ = ["InfluxV1Store", "influxql_ident", "influxql_regex", "influxql_string"]

log = logging.getLogger(__name__)

_AGG = {"mean": "mean", "min": "min", "max": "max", "last": "last", "count": "count"}
_REGEX_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$/\-])")


def influxql_string(text: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def influxql_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_regex(values: Iterable[str]) -> str:
    """A regex literal matching exactly one of ``values`` (RE2 metacharacters and ``/`` escaped)."""
    alts = "|".join(_REGEX_SPECIAL.sub(r"\\\1", v).replace("\n", "\\n") for v in values)
    return f"/^(?:{alts})$/"


def _status_error(op: str, status: int, text: str) -> StoreError:
    """InfluxDB's answer as a StoreError: only a request the server rejects as such is final."""
    # 400: a line it cannot parse or a field type conflict; 413: a body over max-body-size. The
    # same bytes would be refused forever. Everything else (5xx, 401/403 credentials, 404 no
    # database) is a state an operator or time fixes: the data must wait, not be dropped.
    retryable = status not in (400, 413)
    return StoreError(f"influxdb {op} failed: HTTP {status}: {text.strip()[:500]}", retryable=retryable)


def _error_text(resp: httpx2.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text
    return str(body.get("error", body)) if isinstance(body, dict) else resp.text


class InfluxV1Store(InfluxStoreBase):
    """``async with InfluxV1Store(settings, site_id, points) as store: ...``"""

    def __init__(self, settings: InfluxSettings, site_id: str, points: Iterable[Point] = ()) -> None:
        super().__init__(settings, site_id, points)
        self._client: httpx2.AsyncClient | None = None
        self._db_ready = False
        self._m = influxql_ident(settings.measurement)
        self._site = f"site = {influxql_string(site_id)}"
        auth: dict[str, str] = {}
        if settings.username:
            auth = {"u": settings.username, "p": settings.password or ""}
        self._write_params = {"db": settings.database, "precision": "u", **auth}
        if settings.retention_policy:
            self._write_params["rp"] = settings.retention_policy
        self._query_params = {"db": settings.database, "epoch": "u", **auth}

    # -- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        s = self.settings
        self._client = httpx2.AsyncClient(base_url=s.url.rstrip("/"), timeout=s.timeout_s, verify=s.verify_ssl)
        try:
            await self.ping()
            await self._ensure_database()
        except StoreError as err:
            if not err.retryable:
                await self._client.aclose()
                self._client = None
                raise
            # A server that is down at start is the buffer's business, not a reason to refuse to
            # start: the database is created before the first write that reaches it.
            log.warning("InfluxDB at %s not ready yet (%s); will retry on the first write", s.url, err)
        except BaseException:  # cancelled while pinging: the client must not leak its connections
            await self._client.aclose()
            self._client = None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self, op: str) -> httpx2.AsyncClient:
        if self._client is None:
            raise StoreError(f"influxdb {op}: the store is not open", retryable=False)
        return self._client

    async def _post(self, op: str, path: str, params: dict[str, str], **kw: Any) -> httpx2.Response:
        try:
            return await self._http(op).post(path, params=params, **kw)
        except httpx2.TimeoutException as err:
            raise StoreError(f"influxdb {op}: timed out after {self.settings.timeout_s} s: {err!r}",
                             retryable=True) from err
        except (httpx2.TransportError, OSError) as err:
            raise StoreError(f"influxdb {op}: cannot reach {self.settings.url}: {err!r}", retryable=True) from err

    async def ping(self) -> str:
        """The server's version; a StoreError (retryable) when it does not answer."""
        try:
            resp = await self._http("ping").get("/ping")
        except (httpx2.TransportError, OSError) as err:
            raise StoreError(f"influxdb ping: cannot reach {self.settings.url}: {err!r}", retryable=True) from err
        if resp.status_code != 204:
            raise _status_error("ping", resp.status_code, _error_text(resp))
        return resp.headers.get("X-Influxdb-Version", "")

    async def _ensure_database(self) -> None:
        # CREATE DATABASE is idempotent on 1.x: it keeps an existing database and its data.
        await self._query("create database", f"CREATE DATABASE {influxql_ident(self.settings.database)}")
        self._db_ready = True

    # -- writes --------------------------------------------------------------------------------
    async def write_lines(self, body: bytes, precision: str = "u") -> None:
        """POST pre-encoded line protocol (``precision`` as InfluxDB 1.x spells it: n, u, ms, s)."""
        if not body:
            return
        if not self._db_ready:
            await self._ensure_database()
        params = self._write_params if precision == "u" else {**self._write_params, "precision": precision}
        resp = await self._post("write", "/write", params, content=body)
        if resp.status_code == 204:
            return
        if resp.status_code == 404:
            self._db_ready = False  # dropped behind our back: create it again before the next try
        raise _status_error("write", resp.status_code, _error_text(resp))

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a message that could not become a reading (raw bytes base64) as a ``dead_letter`` point."""
        await self.write_lines(self.encoder.dead_letter(letter), precision="n")

    # -- queries -------------------------------------------------------------------------------
    async def _query(self, op: str, q: str) -> list[dict[str, Any]]:
        """The statement's series (name, tags, columns, values); [] when the database is missing."""
        resp = await self._post(op, "/query", self._query_params, data={"q": q})
        if resp.status_code != 200:
            raise _status_error(op, resp.status_code, _error_text(resp))
        series: list[dict[str, Any]] = []
        for result in resp.json().get("results", []):
            if err := result.get("error"):
                if str(err).startswith("database not found"):
                    return []  # nothing was ever written: as empty as an empty database
                raise StoreError(f"influxdb {op} failed: {err} (query: {q})", retryable=False)
            series += result.get("series", [])
        return series

    def _readings(self, series: list[dict[str, Any]]) -> list[Reading]:
        out = []
        for s in series:
            tags, cols = s.get("tags") or {}, s["columns"]
            for values in s.get("values", []):
                row = dict(zip(cols, values, strict=True))
                row.update(tags)
                out.append(reading_from_row(row, row["time"], self._binary))
        return out

    async def latest(self, point_ids: Sequence[str] | None = None) -> list[Reading]:
        """The newest reading of each point (all points when None); points never seen are left out."""
        where = self._site
        if point_ids is not None:
            if not point_ids:
                return []
            where += f" AND point =~ {influxql_regex(dict.fromkeys(point_ids))}"
        # Whole rows: last() per field would mix the newest value with an older row's quality.
        q = f"SELECT * FROM {self._m} WHERE {where} GROUP BY point ORDER BY time DESC LIMIT 1"
        newest = {r.point_id: r for r in self._readings(await self._query("latest", q))}
        if point_ids is None:
            return [newest[p] for p in sorted(newest)]
        return [newest[p] for p in dict.fromkeys(point_ids) if p in newest]

    async def history(
        self,
        point_id: str,
        start: datetime,
        end: datetime,
        bucket_s: float | None = None,
        agg: Aggregate = "mean",
    ) -> list[Reading] | list[Bucket]:
        """Raw readings in [start, end) (every quality), or good-only buckets of ``bucket_s`` seconds."""
        lo, hi = to_us(start) * 1000, to_us(end) * 1000  # InfluxQL time literals are nanoseconds
        where = f"{self._site} AND point = {influxql_string(point_id)} AND time >= {lo} AND time < {hi}"
        if bucket_s is None:
            rows = self._readings(await self._query("history", f"SELECT * FROM {self._m} WHERE {where}"))
            rows.sort(key=lambda r: r.ts)  # one point's series merge in time order; keep it stable
            return rows
        if agg not in _AGG:
            raise ValueError(f"agg must be one of {', '.join(_AGG)}, not {agg!r}")
        width = round(bucket_s * 1_000_000)
        if width <= 0:
            raise ValueError(f"bucket_s must be positive, not {bucket_s}")
        # GROUP BY time() buckets start on multiples of the width since the epoch, as SQLite's.
        q = (f"SELECT {_AGG[agg]}(value), count(value) FROM {self._m} WHERE {where} AND quality = 'good' "
             f"GROUP BY time({width}u) fill(none)")
        out = []
        for s in await self._query("history", q):
            for ts, value, count in s.get("values", []):
                if count:
                    out.append(Bucket(point_id=point_id, start=from_us(ts),
                                      value=None if value is None else float(value), count=count))
        return out

    async def counts(self) -> StoreCounts:
        """How many readings the store holds for this site, in total and per quality (exact)."""
        # count() counts one field, and a row may lack any one (a failed read has no value): a
        # tag selected beside every field in a subquery is non-null on every row, so counting it
        # counts rows.
        q = (f"SELECT count(c) FROM (SELECT value, reasons, detail, point AS c FROM {self._m} "
             f"WHERE {self._site} GROUP BY quality) GROUP BY quality")
        per: dict[str, int] = {}
        for s in await self._query("counts", q):
            quality = (s.get("tags") or {}).get("quality", "")
            per[quality] = per.get(quality, 0) + sum(int(v[1]) for v in s.get("values", []))
        return StoreCounts(total=sum(per.values()), good=per.get("good", 0),
                           uncertain=per.get("uncertain", 0), bad=per.get("bad", 0))
