"""exitflow's foundation: errors, files, the strict YAML schema loader, data sets, the design model
and the board catalogue. Imports nothing of exitflow above it.

The board catalogue is one YAML file per board, the only place board facts live. Built-in boards
are in ``core/catalogue/``. A user adds a board by dropping one ``.yaml`` file into the user board
folder: ``$EXITFLOW_BOARDS`` if set (several folders separated by ``:``), otherwise
``$XDG_CONFIG_HOME/exitflow/boards`` (``~/.config/exitflow/boards``). See ``boards/README.md`` for
the fields.
"""

__version__ = "0.1.0"  # exitflow's version (exitflow.__version__): here, so every layer may read it
