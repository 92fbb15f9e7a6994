"""Text from a file (a checkpoint's data name, a folder name) placed into Markdown that a browser renders:
shown as the characters it holds, never as markup, a link or HTML."""
from __future__ import annotations

import html
import re

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones that start markup
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def escape_markdown(text: str, max_chars: int = 200) -> str:
    """One line of literal text: HTML entities for & < > ", markup characters backslash-escaped, line breaks
    as spaces, at most `max_chars` characters (a name, not a document)."""
    text = " ".join(str(text).split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return _MARKUP.sub(r"\\\1", html.escape(text, quote=True))

