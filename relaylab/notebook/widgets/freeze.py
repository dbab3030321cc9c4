"""Saved notebooks: each live widget output becomes static HTML of what it showed last.

python -m relaylab.notebook.widgets NOTEBOOK.ipynb...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relaylab.notebook.widgets.static_html import html_to_text
from relaylab.notebook.widgets.style import esc, plural

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def freeze_widget_outputs(notebook: dict[str, Any]) -> int:
    """Replace each live widget output of a saved notebook (a dict in nbformat 4) by static
    HTML and text of what the widget showed last, taken from the notebook's saved widget
    state; then drop that state. Returns the number of outputs replaced.

    A widget output only renders where JavaScript can rebuild the widget (and fetch its
    library); GitHub and ``nbconvert --to html`` show an empty output instead. Run the
    cell again in Jupyter and the live widget is back.
    """
    state = notebook.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            model = data[WIDGET_VIEW].get("model_id", "")
            page = _widget_html(state, model)
            if not page.strip():
                page = "<i>(a live widget: run the notebook to see it)</i>"
            page = (
                f"<div class='rl-view'>{page}<div class='rl-meta'><i>Saved from the last run; "
                "run the cell to use it live.</i></div></div>"
            )
            output["data"] = {"text/html": page, "text/plain": html_to_text(page)}
            replaced += 1
    notebook.get("metadata", {}).pop("widgets", None)
    return replaced


def _widget_html(state: dict[str, Any], model_id: str) -> str:
    model = state.get(model_id)
    if model is None:
        return ""
    name, values = model.get("model_name", ""), model.get("state", {})
    children = [
        _widget_html(state, ref.removeprefix("IPY_MODEL_")) for ref in values.get("children", [])
    ]
    if name in ("HTMLModel", "HTMLMathModel"):
        return str(values.get("value", ""))
    if name == "LabelModel":
        return esc(str(values.get("value", "")))
    if name == "HBoxModel":
        return "<div style='display: flex; gap: 6px'>" + " ".join(children) + "</div>"
    if name == "AccordionModel":
        titles = list(values.get("titles", [])) + [""] * len(children)
        return "".join(
            f"<details><summary>{esc(str(title))}</summary>{child}</details>"
            for title, child in zip(titles, children, strict=False)
        )
    if name in ("VBoxModel", "BoxModel", "GridBoxModel"):
        return "".join(f"<div>{child}</div>" for child in children)
    if name == "TextModel":
        return f"<code>[{esc(str(values.get('value', '')))}]</code>"
    if name == "ButtonModel":
        return f"<code>[{esc(str(values.get('description', '')))}]</code>"
    return ""


def freeze_files(paths: Sequence[str]) -> int:
    """``python -m relaylab.notebook.widgets NOTEBOOK...``: freeze the widget outputs in place."""
    if not paths:
        sys.stderr.write("usage: python -m relaylab.notebook.widgets NOTEBOOK.ipynb...\n")
        return 2
    for name in paths:
        path = Path(name)
        notebook = json.loads(path.read_text(encoding="utf-8"))
        count = freeze_widget_outputs(notebook)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        sys.stdout.write(f"{path}: {plural(count, 'widget output')} saved as static HTML\n")
    return 0
