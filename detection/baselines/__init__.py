"""Baseline detectors: classic methods the deep detector is measured against."""
