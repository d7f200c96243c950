"""Record types, pyarrow schemas of every cache table, and configuration dataclasses."""
