"""The stand-in's Metrics API: `metric` routes and `detail/list` answered from the data set.

It enforces the documented rules a worker must respect, with error answers
(``{"error": {"code", "message"}}``): full ISO dates with a zone, known routes,
sales and uptime routes broken down by ``["entity"]`` only, demographics on
the routes that count people (entries, passers-by, capture rate), taxonomy on
``entries`` and area routes. Its own limits, also
error answers: ``entityType`` must be ``location`` and the breakdown must include
``entity``. Start and end are read as UTC and used as the stores' local times.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .data import SHARES, DataSet, Location, apportion, bucket_start, unit

__all__ = ["MetricsAPI", "StandinError"]

PERIODS = ("hour", "day", "week", "month", "year")
SALES = ("transactions/data", "transactions/conversion-rate")
AREA = ("area/max-occupancy", "area/average-occupancy", "area/utilisation")
#: Routes that count people, so they split by age, gender and role.
DEMOGRAPHIC = ("entries", "passers-by", "capture-rate")
ROUTES = ("entries", "passers-by", "capture-rate", "max-occupancy", "uptime", *SALES, *AREA)
UNITS = {
    "entries": {"entries": "peopleCount"},
    "passers-by": {"passers_by": "peopleCount"},
    "capture-rate": {"capture_rate": "percentage"},
    "max-occupancy": {"area_max_occupancy": "peopleCount"},
    "area/max-occupancy": {"area_max_occupancy": "peopleCount"},
    "area/average-occupancy": {"area_average_occupancy": "peopleCount"},
    "area/utilisation": {"area_utilisation": "percentage"},
    "transactions/data": {
        "sales_transaction_count": "number",
        "sales_volume": "currency-GBP",
        "sales_units": "number",
        "sales_atv": "currency-GBP",
        "sales_upt": "number",
    },
    "transactions/conversion-rate": {"sales_conversion_rate": "percentage"},
    "uptime": {"uptime": "percentage"},
}


class StandinError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)

    def answer(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": str(self)}}


@dataclass(slots=True)
class Totals:
    """Sums over the open hours of one bucket."""

    entries: int = 0
    passers_by: int = 0
    transactions: int = 0
    units: int = 0
    volume: float = 0.0
    open_hours: int = 0
    peak_hour: int = 0
    first: datetime | None = None  # the bucket's first hour (seeds uptime's jitter)


class MetricsAPI:
    def __init__(self, data: DataSet) -> None:
        self.data = data

    def answer(self, action: str, route: str, body: Any) -> Any:
        """The JSON answer to one request (an error answer for a request it refuses)."""
        try:
            if not isinstance(body, dict):
                raise StandinError("bad_request", "body must be an object")
            if action == "detail" and route == "detail/list":
                return self.detail_list(body)
            if action == "metric" and route in ROUTES:
                return self.metric(route, body)
            raise StandinError("unknown_route", f"unknown route {action}/{route}")
        except StandinError as exc:
            return exc.answer()

    # -- detail/list ---------------------------------------------------------------

    def detail_list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        wanted, given = body.get("returnEntityType"), body.get("entityType")
        ids = set(body.get("entities") or ())
        if given == "organisation":
            locations = [loc for loc in self.data.locations if loc.organisation.id in ids]
        elif given == "location":
            locations = [loc for loc in self.data.locations if loc.id in ids]
        else:
            raise StandinError("bad_request", "entityType must be organisation or location")
        if wanted == "location":
            return [loc.record() for loc in locations]
        if wanted == "organisation":
            orgs = {loc.organisation.id: loc.organisation for loc in locations}
            if given == "organisation":
                orgs.update({o.id: o for o in self.data.organisations if o.id in ids})
            return [o.record() for o in orgs.values()]
        raise StandinError("bad_request", "returnEntityType must be organisation or location")

    # -- metric routes -------------------------------------------------------------

    def metric(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        start, end = _when(body, "start"), _when(body, "end")
        period = body.get("aggregationPeriod")
        if period not in PERIODS:
            raise StandinError(
                "bad_request", f"aggregationPeriod must be one of {', '.join(PERIODS)}"
            )
        if body.get("entityType") != "location":
            raise StandinError("unsupported", "the stand-in serves entityType 'location' only")
        locations = self._locations(body.get("entities"))
        dims = _breakdown(route, body.get("breakdownByDimensions"))
        slices = _slices(dims, body)
        facets = body.get("facets") or ["segments"]
        answer: dict[str, Any] = {"meta": {"units": UNITS[route]}}
        if "segments" in facets:
            answer["segments"] = [
                row
                for loc in locations
                for when, totals in self._buckets(loc, start, end, period)
                for row in self._rows(route, loc, totals, slices, {"index": _index(when)})
            ]
        if "summary" in facets:
            answer["summary"] = [
                row
                for loc in locations
                for row in self._rows(route, loc, self._total(loc, start, end), slices, {})
            ]
        return answer

    def _locations(self, entities: Any) -> list[Location]:
        if not isinstance(entities, list) or not entities:
            raise StandinError("bad_request", "entities must be a non-empty array")
        unknown = [e for e in entities if e not in self.data.by_id]
        if unknown:
            raise StandinError("not_found", f"unknown location {unknown[0]!r}")
        return [self.data.by_id[e] for e in entities]

    def _buckets(
        self, loc: Location, start: datetime, end: datetime, period: str
    ) -> Iterable[tuple[datetime, Totals]]:
        buckets: dict[datetime, Totals] = {}
        for when, hour in self.data.hours(loc, start, end):
            key = bucket_start(when, period)
            totals = buckets.get(key)
            if totals is None:
                totals = buckets[key] = Totals(first=when)
            _add(totals, hour)
        return buckets.items()

    def _total(self, loc: Location, start: datetime, end: datetime) -> Totals:
        totals = Totals(first=start)
        for _, hour in self.data.hours(loc, start, end):
            _add(totals, hour)
        return totals

    def _rows(
        self,
        route: str,
        loc: Location,
        totals: Totals,
        slices: list[tuple[dict[str, str], float, bool]],
        base: dict[str, Any],
    ) -> Iterable[dict[str, Any]]:
        base = {**base, "location": loc.id}
        if len(slices) == 1 and not slices[0][0]:
            yield {**base, **self._values(route, loc, totals)}
            return
        shares = [share for _, share, _ in slices]
        counted = route in DEMOGRAPHIC
        entries = apportion(totals.entries, shares) if counted else []
        passers = apportion(totals.passers_by, shares) if counted else []
        for n, (labels, share, asked) in enumerate(slices):
            if not asked:
                continue
            if counted:
                # People are counted into slices whole, so the slices sum to the total.
                part = Totals(
                    entries=entries[n], passers_by=passers[n], open_hours=totals.open_hours
                )
                values = self._values(route, loc, part)
            else:
                values = self._values(route, loc, totals, share)
            yield {**base, **labels, **values}

    def _values(self, route: str, loc: Location, t: Totals, share: float = 1.0) -> dict[str, Any]:
        closed = t.open_hours == 0
        if route == "uptime":
            return {"uptime": round(100 - 2.5 * _jitter(loc.number, t.first) ** 6, 1)}
        if route == "entries":
            return {"entries": None if closed else t.entries}
        if route == "passers-by":
            return {"passers_by": None if closed else t.passers_by}
        if route == "capture-rate":
            seen = t.entries + t.passers_by
            return {
                "capture_rate": None if closed or not seen else round(100 * t.entries / seen, 1)
            }
        if route in ("max-occupancy", "area/max-occupancy"):
            peak = round(t.peak_hour * 0.6 * (1.2 * share if route != "max-occupancy" else 1))
            return {"area_max_occupancy": None if closed else peak}
        if route == "area/average-occupancy":
            avg = t.entries / t.open_hours * 0.6 * share if not closed else None
            return {"area_average_occupancy": None if avg is None else round(avg, 1)}
        if route == "area/utilisation":
            capacity = max(1.0, loc.daily_base * 0.05 * share)
            avg = t.entries / t.open_hours * 0.6 * share if not closed else None
            return {
                "area_utilisation": None
                if avg is None
                else round(min(100.0, 100 * avg / capacity), 1)
            }
        if route == "transactions/conversion-rate":
            rate = None if closed or not t.entries else round(100 * t.transactions / t.entries, 1)
            return {"sales_conversion_rate": rate}
        tx = t.transactions
        return {
            "sales_transaction_count": None if closed else tx,
            "sales_volume": None if closed else round(t.volume, 2),
            "sales_units": None if closed else t.units,
            "sales_atv": None if closed or not tx else round(t.volume / tx, 2),
            "sales_upt": None if closed or not tx else round(t.units / tx, 2),
        }


def _add(totals: Totals, hour: Any) -> None:
    if hour is None:
        return
    totals.entries += hour.entries
    totals.passers_by += hour.passers_by
    totals.transactions += hour.transactions
    totals.units += hour.units
    totals.volume += hour.volume
    totals.open_hours += 1
    totals.peak_hour = max(totals.peak_hour, hour.entries)


def _when(body: dict[str, Any], key: str) -> datetime:
    text = body.get(key)
    if not isinstance(text, str) or "T" not in text:
        raise StandinError(
            "bad_request", f"{key} must be a full ISO 8601 date-time with a timezone"
        )
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StandinError("bad_request", f"{key} is not an ISO 8601 date-time: {text!r}") from None
    if when.tzinfo is None:
        raise StandinError("bad_request", f"{key} must carry a timezone: {text!r}")
    return when.astimezone(UTC).replace(tzinfo=None)


def _breakdown(route: str, value: Any) -> list[str]:
    dims = list(value or ())
    if (route in SALES or route == "uptime") and dims != ["entity"]:
        raise StandinError("bad_request", f'{route} requires breakdownByDimensions ["entity"]')
    if "entity" not in dims:
        raise StandinError("unsupported", "the stand-in needs 'entity' in breakdownByDimensions")
    for dim in dims:
        if dim in ("age", "gender", "role") and route not in DEMOGRAPHIC:
            raise StandinError("bad_request", f"{route} cannot be broken down by {dim}")
        if dim == "taxonomy" and route not in ("entries", *AREA):
            raise StandinError("bad_request", f"{route} cannot be broken down by taxonomy")
        if dim not in ("entity", *SHARES):
            raise StandinError("bad_request", f"unknown dimension {dim!r}")
    return [d for d in dims if d != "entity"]


_LIST_KEY = {"age": "ages", "gender": "genders", "role": "roles", "taxonomy": "taxonomy"}


def _slices(dims: list[str], body: dict[str, Any]) -> list[tuple[dict[str, str], float, bool]]:
    """Every combination of breakdown values: its labels, its share, whether it was asked for.

    Counts are apportioned over all combinations, so the asked-for ones keep their
    true values when the body lists only some (``"ages": ["25_34"]``).
    """
    if not dims:
        return [({}, 1.0, True)]
    axes = []
    for dim in dims:
        names, shares = SHARES[dim]
        wanted = body.get(_LIST_KEY[dim]) or names
        axes.append([(dim, n, s, n in wanted) for n, s in zip(names, shares, strict=True)])
    out = []
    for combo in itertools.product(*axes):
        share = 1.0
        for _, _, s, _ in combo:
            share *= s
        out.append(({dim: name for dim, name, _, _ in combo}, share, all(k for *_, k in combo)))
    return out


def _index(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000")


def _jitter(number: int, when: datetime | None) -> float:
    return unit(number, when.toordinal() if when else 0, 7)
