"""`python -m reelbatch.cli ...`, the same as the `reelbatch` console script."""

from reelbatch.cli import main

main()
