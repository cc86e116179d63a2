"""The board catalogue: one YAML file per board, the only place board facts live.

Built-in boards are in ``boards/catalogue/``. A user adds a board by dropping one ``.yaml`` file
into the user board folder: ``$EXITFLOW_BOARDS`` if set (several folders separated by ``:``),
otherwise ``$XDG_CONFIG_HOME/exitflow/boards`` (``~/.config/exitflow/boards``). See
``boards/README.md`` for the fields.
"""

from .catalogue import (
    Board,
    Resources,
    board_dirs,
    get_board,
    load_board_file,
    load_catalogue,
    user_board_dirs,
)

__all__ = [
    "Board",
    "Resources",
    "board_dirs",
    "get_board",
    "load_board_file",
    "load_catalogue",
    "user_board_dirs",
]
