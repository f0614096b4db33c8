"""Test-only builders (tiny random models, toy data). Nothing in the runtime package imports this package."""
