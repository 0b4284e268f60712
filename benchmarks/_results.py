"""Where benchmark scripts put what they measured: a Markdown table and the same numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, text: str, data: Any) -> None:
    """Write ``text`` to ``out`` (Markdown), ``data`` beside it as ``.json``, and print the text."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
