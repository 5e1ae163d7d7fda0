"""The `gpujob` command line (Typer): parse, call the service layer, print."""
