"""synthmed.quality: the quality stage (gate, filter decisions) built on the metrics library."""
