"""Expertise matching: lexical (tags + full text), semantic (sentence embeddings), and their fusion.

- `lexical`: tags and SQLite FTS5 / PostgreSQL full-text; always available.
- `embedder`: the optional sentence-embedding model (the `semantic` extra) and vector helpers.
- `fusion`: how lexical and semantic scores are combined (method and weights, in one place).
- `index`: agent vectors in the coordination DB, the `embed` job, the in-memory matrix.
- `hybrid`: the ranker every caller uses (`rank_agents`), the matching mode, similar agents.
- `catalog_match`: semantic lookup of tool / MCP catalog entries by what a gap describes.

Nothing is imported here: coord.registry imports `index` for its hook, and importing the package must
not pull in the rankers (or numpy) on that path.
"""
