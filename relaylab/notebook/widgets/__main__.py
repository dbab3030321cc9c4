"""``python -m relaylab.notebook.widgets NOTEBOOK.ipynb...``: freeze the live widget
outputs of saved notebooks in place (relaylab.notebook.widgets.freeze)."""

import sys

from relaylab.notebook.widgets.freeze import freeze_files

sys.exit(freeze_files(sys.argv[1:]))
