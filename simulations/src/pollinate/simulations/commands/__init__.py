"""Sub-commands of the ``pollinate`` CLI, one module each."""
