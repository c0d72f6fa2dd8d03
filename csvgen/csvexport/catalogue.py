"""What csvgen knows of the Aura Metrics API and of its own request format (SPEC §3, §4).

Tables only, no behaviour: the dimensions and their enum values, the column headings
that name a dimension, which route serves which ``fetchValue`` and which value fields a
route answers. Every rule in plan.py reads them from here.
"""

from __future__ import annotations

__all__ = [
    "COMPRESSIONS",
    "DATE_PERIODS",
    "DIMENSIONS",
    "DIMENSION_ALIASES",
    "DIMENSION_BY_NAME",
    "ENTITY_ONLY_ROUTES",
    "ENTITY_TYPES",
    "ENUMS",
    "OWN_FIELDS",
    "PERIOD_HOURS",
    "ROUTE_BY_FETCH_VALUE",
    "SALES_FIELDS",
    "VALUE_FIELDS",
]

#: rowFilters values, in the order the spec lists them.
DIMENSIONS = ("entity", "age", "gender", "role", "taxonomy")
ENUMS = {
    "age": ("ages", ["0_15", "16_24", "25_34", "35_44", "45_54", "55_64", "65_100"]),
    "gender": ("genders", ["male", "female"]),
    "role": ("roles", ["customer", "staff", "customer-customer", "customer-staff", "staff-staff"]),
}
ENTITY_TYPES = ("location", "organisation", "recording")
COMPRESSIONS = ("none", "gzip")
#: Periods whose bucket is written as a date; anything finer is a full timestamp.
DATE_PERIODS = frozenset({"day", "week", "month", "year"})

DIMENSION_ALIASES = {
    "index": ("index", "date", "day", "time", "timestamp", "period", "hour", "week", "month"),
    "entity": ("entity", "location", "store", "site", "organisation", "recording"),
    "entity_name": ("entity_name", "entity name", "location name", "store name", "site name"),
    "age": ("age", "age group"),
    "gender": ("gender",),
    "role": ("role",),
    "taxonomy": ("taxonomy", "zone", "area"),
}
DIMENSION_BY_NAME = {alias: dim for dim, aliases in DIMENSION_ALIASES.items() for alias in aliases}

SALES_FIELDS = ("sales_transaction_count", "sales_volume", "sales_units", "sales_atv", "sales_upt")
#: fetchValue → route (SPEC §3); area_max_occupancy depends on the body.
ROUTE_BY_FETCH_VALUE = {
    "entries": "entries",
    "passers_by": "passers-by",
    "capture_rate": "capture-rate",
    "area_average_occupancy": "area/average-occupancy",
    "area_utilisation": "area/utilisation",
    "sales_conversion_rate": "transactions/conversion-rate",
    "uptime": "uptime",
    **dict.fromkeys(SALES_FIELDS, "transactions/data"),
}
#: Value fields of the routes csvgen knows; fetchValue may be left out when there is one.
VALUE_FIELDS = {
    "entries": ("entries",),
    "passers-by": ("passers_by",),
    "capture-rate": ("capture_rate",),
    "max-occupancy": ("area_max_occupancy",),
    "area/max-occupancy": ("area_max_occupancy",),
    "area/average-occupancy": ("area_average_occupancy",),
    "area/utilisation": ("area_utilisation",),
    "transactions/data": SALES_FIELDS,
    "transactions/conversion-rate": ("sales_conversion_rate",),
    "uptime": ("uptime",),
}
#: Routes that take breakdownByDimensions ["entity"] only.
ENTITY_ONLY_ROUTES = frozenset({"transactions/data", "transactions/conversion-rate", "uptime"})
#: csvgen's own fields on a metric request; never sent upstream.
OWN_FIELDS = ("metricId", "name", "route")

#: Hours in one bucket of each period csvgen can count buckets of (for the row estimate).
PERIOD_HOURS = {"hour": 1.0, "day": 24.0, "week": 168.0, "month": 28 * 24.0, "year": 365 * 24.0}
