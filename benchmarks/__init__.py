"""Commands that measure dimlearn: ``python -m benchmarks.quality`` and ``benchmarks.speed``."""
