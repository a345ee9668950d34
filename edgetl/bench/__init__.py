"""Latency benchmark: backends, the timing worker, results and MACs."""
