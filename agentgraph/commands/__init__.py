"""Sub-commands of the ``agentgraph`` CLI; each module has ``register(subparsers)``."""
