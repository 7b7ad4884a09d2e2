"""`python -m metaedge` runs the command line."""

from metaedge.cli import main

main()
