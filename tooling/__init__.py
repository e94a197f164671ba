"""Tooling around the method: benchmarks, sweep/seed summaries, cache sharing, synthetic caches.

Nothing in `pipeline/` imports from here; these modules import the pipeline."""
