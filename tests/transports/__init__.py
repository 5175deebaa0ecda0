"""Transport adapters against real servers on loopback."""
