"""The notebook facade: a Lab on its background loop, simulated callers, live widgets,
self-checking exercises, recordings and latency waterfalls.
"""
