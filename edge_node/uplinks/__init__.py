"""uplinks."""
