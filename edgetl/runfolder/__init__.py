"""The run folder: every path of a run, its lock, lineage and typed records."""
