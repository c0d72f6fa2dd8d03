"""The stand-in's sample data set: deterministic, realistic in shape, cheap for any range.

Not a model of Aura's numbers: a plausible retail world so that exports have
something true to show. Every value derives from hourly counts computed from a
seed, so coarser buckets are exact sums of finer ones, and breakdowns (age,
gender, role, taxonomy) are apportioned so that their parts sum exactly to the
entity's total. Magnitudes follow the fact sheet (§14): about 1,000-1,300
entries a day, a capture rate near 20 %, conversion 13-15 %, ATV £45-50 and
UPT 2.1-2.5, closed hours as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

__all__ = ["DataSet", "Location", "Organisation", "apportion", "bucket_start", "unit"]

AGES = ("0_15", "16_24", "25_34", "35_44", "45_54", "55_64", "65_100")
AGE_SHARE = (0.05, 0.19, 0.27, 0.21, 0.14, 0.09, 0.05)
GENDERS = ("male", "female")
GENDER_SHARE = (0.44, 0.56)
ROLES = ("customer", "staff", "customer-customer", "customer-staff", "staff-staff")
ROLE_SHARE = (0.9, 0.06, 0.02, 0.015, 0.005)
AREAS = (
    "Products:Clothing",
    "Products:Clothing:Shoes",
    "Service:Checkout",
    "Service:Fitting Rooms",
)
AREA_SHARE = (0.55, 0.15, 0.2, 0.1)
SHARES = {
    "age": (AGES, AGE_SHARE),
    "gender": (GENDERS, GENDER_SHARE),
    "role": (ROLES, ROLE_SHARE),
    "taxonomy": (AREAS, AREA_SHARE),
}
#: Share of a day's entries in each opening hour, by hour of day (a lunch and an after-work peak).
HOUR_SHAPE = {
    9: 0.045, 10: 0.065, 11: 0.085, 12: 0.11, 13: 0.115, 14: 0.095, 15: 0.085,
    16: 0.09, 17: 0.105, 18: 0.095, 19: 0.065, 20: 0.045,
}  # fmt: skip
WEEKDAY_FACTOR = (0.88, 0.84, 0.9, 0.95, 1.08, 1.32, 1.03)  # Monday first

NAMED_ORGS = (
    ("64a1b2c3d4e5f6a7b8c9d0e2", "Aura Retail Group", "Europe/London", "GBP"),
    ("64a1b2c3d4e5f6a7b8c9d0f0", "Nordlicht Mode", "Europe/Berlin", "EUR"),
    ("64a1b2c3d4e5f6a7b8c9d0f1", "Harbour & Co", "America/New_York", "USD"),
)
#: (id, name, index into NAMED_ORGS); locations beyond these are generated.
NAMED_LOCATIONS = (
    ("64a1b2c3d4e5f6a7b8c9d0e3", "Oxford Street Store", 0),
    ("64a1b2c3d4e5f6a7b8c9d0e6", "Regent Street Store", 0),
    ("64a1b2c3d4e5f6a7b8c9d0e7", "Kings Road Store", 0),
    ("64a1b2c3d4e5f6a7b8c9d0e8", "Covent Garden Store", 0),
    ("64a1b2c3d4e5f6a7b8c9d0f2", "Berlin Mitte", 1),
    ("64a1b2c3d4e5f6a7b8c9d0f3", "Hamburg Jungfernstieg", 1),
    ("64a1b2c3d4e5f6a7b8c9d0f4", "Fifth Avenue", 2),
    ("64a1b2c3d4e5f6a7b8c9d0f5", "Boston Newbury Street", 2),
)


def _mix(*values: int) -> int:
    """A cheap, well-spread 64-bit hash of integers (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h ^ (h >> 29)


def unit(*values: int) -> float:
    """A deterministic number in [0, 1)."""
    return (_mix(*values) >> 11) / float(1 << 53)


def apportion(total: int, shares: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` that sum exactly to it."""
    raw = [total * s / sum(shares) for s in shares]
    parts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass(frozen=True, slots=True)
class Organisation:
    id: str
    name: str
    timezone: str
    currency: str

    def record(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "status": "active",
                "timezone": self.timezone, "currency": self.currency}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Location:
    id: str
    name: str
    organisation: Organisation
    number: int
    daily_base: float  # entries on an average weekday
    capture: float  # entries / (entries + passers-by)
    conversion: float  # transactions / entries
    atv: float
    upt: float
    opens: int  # first open hour (local)
    closes: int  # first closed hour
    sunday_closed: bool

    def record(self) -> dict[str, object]:
        org = self.organisation
        return {
            "id": self.id,
            "organisation_id": org.id,
            "name": self.name,
            "status": "operational",
            "coordinates": "[51.5074,-0.1278]",
            "timezone": org.timezone,
            "currency": org.currency,
        }


@dataclass(frozen=True, slots=True)
class Hour:
    """Counts of one location-hour; ``None`` when the store is closed."""

    entries: int
    passers_by: int
    transactions: int
    units: int
    volume: float


class DataSet:
    def __init__(self, locations: int = 8, seed: int = 2024) -> None:
        self.seed = seed
        self.organisations = [Organisation(*o) for o in NAMED_ORGS]
        self.locations: list[Location] = []
        for n in range(locations):
            named = n < len(NAMED_LOCATIONS)
            lid, name, org = (
                NAMED_LOCATIONS[n] if named else (f"64a1b2c3{n:016x}", f"Store {n:04d}", n % 3)
            )
            u = [unit(seed, n, k) for k in range(8)]
            self.locations.append(Location(
                id=lid, name=name, organisation=self.organisations[org], number=n,
                daily_base=1000 + 300 * u[0], capture=0.18 + 0.05 * u[1],
                conversion=0.13 + 0.02 * u[2], atv=45 + 5 * u[3], upt=2.1 + 0.4 * u[4],
                opens=9 if u[5] < 0.6 else 10, closes=20 if u[6] < 0.5 else 21,
                sunday_closed=u[7] < 0.15,
            ))  # fmt: skip
        self.by_id = {loc.id: loc for loc in self.locations}

    def hour(self, loc: Location, when: datetime) -> Hour | None:
        """The counts of one location in one hour (local time), ``None`` outside opening hours."""
        day = when.date()
        weekday = day.weekday()
        if not loc.opens <= when.hour < loc.closes or (weekday == 6 and loc.sunday_closed):
            return None
        season = 1 + 0.12 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 100) / 365.25)
        if day.month == 12 and day.day >= 10:
            season *= 1.35
        ordinal = day.toordinal()
        noise = 0.85 + 0.3 * unit(self.seed, loc.number, ordinal, when.hour)
        shape = HOUR_SHAPE.get(when.hour, 0.04)
        entries = round(loc.daily_base * WEEKDAY_FACTOR[weekday] * season * shape * noise)
        daily = 0.9 + 0.2 * unit(self.seed, loc.number, ordinal, 99)
        passers = round(entries * (1 - loc.capture * daily) / (loc.capture * daily))
        transactions = round(
            entries * loc.conversion * (0.9 + 0.2 * unit(loc.number, ordinal, when.hour))
        )
        units = round(transactions * loc.upt)
        volume = round(
            transactions * loc.atv * (0.9 + 0.2 * unit(loc.number, ordinal, when.hour, 5)), 2
        )
        return Hour(entries, passers, transactions, units, volume)

    def hours(
        self, loc: Location, start: datetime, end: datetime
    ) -> Iterator[tuple[datetime, Hour | None]]:
        """Every hour from ``start`` to ``end`` (both inclusive, naive local times)."""
        when = start.replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
        while when <= end:
            yield when, self.hour(loc, when)
            when += step


def bucket_start(when: datetime, period: str) -> datetime:
    """The first hour of the bucket ``when`` falls in (weeks start on Monday)."""
    if period == "hour":
        return when
    day = when.replace(hour=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "year":
        return day.replace(month=1, day=1)
    raise ValueError(period)


def dates(start: date, end: date) -> Iterator[date]:
    while start <= end:
        yield start
        start += timedelta(days=1)
