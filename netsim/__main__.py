"""`python -m netsim` is the `hvsim` command."""
from netsim.cli import main

main()
