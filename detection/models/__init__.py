"""The deep false-data-injection detector: network, training, signed artifacts."""
