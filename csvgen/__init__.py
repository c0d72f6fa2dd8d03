"""csvgen: the worker behind Aura's ``external-service/csv-generator`` route."""

__version__ = "0.1.0"
