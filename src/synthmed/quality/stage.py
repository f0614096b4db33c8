"""The quality stage (moved here from metrics/; see run_quality)."""

from synthmed.metrics.quality import run_quality  # noqa: F401  (temporary until the move lands)
