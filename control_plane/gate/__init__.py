"""The false-data-injection gate (ingest stage 5) and its judges."""
