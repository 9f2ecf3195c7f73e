"""Deduplication helpers: vectorised MinHash and LSH banding (see dedup/minhash.py)."""
