"""The typer CLI: an outer layer over the library. Command modules import heavy parts lazily."""
