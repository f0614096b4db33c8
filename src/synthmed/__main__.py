"""``python -m synthmed`` (also ``accelerate launch -m synthmed ...``)."""

from synthmed.cli import main

main()
