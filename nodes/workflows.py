"""Which of ComfyUI's two workflow formats a document is.

ComfyUI saves a graph for its editor (``nodes``/``links``: the "saved" or UI format) and
exports a prompt for its executor (``{node_id: {"class_type", "inputs"}}``: the API
format). Jobs and the Remote Submit node both need to tell them apart.
"""

from __future__ import annotations

from typing import Any

#: How to get the API format from ComfyUI, for errors that refuse a saved workflow.
EXPORT_HINT = "in ComfyUI use Workflow > Export (API), or enable dev mode and use Save (API Format)"


def is_saved_format(document: Any) -> bool:
    """Whether ``document`` is a saved (UI-format) graph rather than an API prompt."""
    return isinstance(document, dict) and "nodes" in document and "links" in document
