"""An offline chat data set to fine-tune on: the dialogues of `chatterbot-corpus` (BSD licensed; short YAML
dialogues by topic in many languages) as a messages .jsonl the trainer reads.

    pip install chatterbot-corpus --no-deps
    python -c "from smolm135.data.chat_corpus import write_chatterbot_jsonl; write_chatterbot_jsonl('chat.jsonl')"
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator

from smolm135.errors import UserError

SHUFFLE_SEED = 0  # the topics come one file after another; shuffled, the held-out tail samples all of them


def chatterbot_folder(language: str) -> Path:
    try:
        import chatterbot_corpus
    except ModuleNotFoundError:
        raise UserError("the chat quick start reads the chatterbot-corpus package: pip install chatterbot-corpus "
                        "--no-deps") from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not folder.is_dir():
        languages = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
        raise UserError(f"chatterbot-corpus has no language {language!r}: choose one of {', '.join(languages)}")
    return folder


def chatterbot_conversations(language: str = "english") -> Iterator[list[dict]]:
    """Each dialogue as messages: its statements alternate user and assistant, starting with the user; a
    last statement nobody answers is left out (nothing to learn from)."""
    import yaml

    for path in sorted(chatterbot_folder(language).glob("*.yml")):
        # BaseLoader keeps every value a string: YAML 1.1 would read an answer "Yes" as True
        dialogues = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader).get("conversations", [])
        for dialogue in dialogues:
            statements = [s.strip() for s in dialogue if isinstance(s, str) and s.strip()]
            statements = statements[:len(statements) // 2 * 2]
            if statements:
                yield [{"role": ("user", "assistant")[i % 2], "content": s} for i, s in enumerate(statements)]


def write_chatterbot_jsonl(path: str | os.PathLike, language: str = "english") -> Path:
    """chatterbot-corpus's dialogues in `language`, shuffled with a fixed seed, as a messages .jsonl."""
    conversations = list(chatterbot_conversations(language))
    random.Random(SHUFFLE_SEED).shuffle(conversations)
    path = Path(path)
    path.write_text("".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
                            for messages in conversations), encoding="utf-8")
    print(f"wrote {len(conversations):,} conversations from chatterbot-corpus ({language}) to {path}")
    return path
