"""`python -m isdaa.cli ...` and `accelerate launch -m isdaa.cli ...`."""

from isdaa.cli import main

main()
