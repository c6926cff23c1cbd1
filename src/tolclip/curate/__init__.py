"""Curation: turn real image collections into shards (sources, taxonomy resolution, dedup, the staged build, check)."""
