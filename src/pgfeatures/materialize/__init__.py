"""Materialized feature services: one serving row per entity key, kept in step with the tables.

- ``sql``: the serving tables, their build, and the triggers and refresh functions that keep them
  in step with every write (pure);
- ``build_async`` / ``build`` (generated): ``pgfeatures materialize SERVICE``: build or rebuild a
  service's serving rows online and switch atomically; the check of a sample of serving rows
  against the tables (``pgfeatures doctor``).
"""
