"""smoe-rm: sparse MoE reward models from a cached backbone feature store."""
