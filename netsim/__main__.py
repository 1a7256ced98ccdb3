"""`python -m netsim` is the `hvsim` command."""
from netsim.cli.app import main

main()
