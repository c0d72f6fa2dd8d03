"""A local stand-in for the Aura bus, the Aura Metrics API and S3 (SPEC §7)."""
