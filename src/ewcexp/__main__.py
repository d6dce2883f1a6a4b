"""`python -m ewcexp strategy=ewc lambda=400`: the same as the `ewcexp` command."""

from ewcexp.app.main import main

main()
