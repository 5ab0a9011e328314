"""zsconf: config-as-code for an LLM platform.

The library behind the CLI and the daemon: stack loading, validation, the resource graph, the
state store and the plan/apply engine. Never imports torch: runners do the heavy work in their own
processes.
"""

__version__ = "0.1.0"
