"""The `smoe` command and one entry point per DVC stage (`python -m stages.<name>`): I/O and one library call each."""
