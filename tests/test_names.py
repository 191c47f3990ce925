"""Only live names: the retired params (steeldefect.params.MOVED: now environment variables) appear in no message,
comment or doc, except in MOVED itself (its refusal is tested in test_params.py). Code identifiers such as
`runtime.feature_cache` and the variables STEELDEFECT_FEATURE_CACHE are fine: only the param forms are searched."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from steeldefect.params import MOVED

from helpers import REPO

SCANNED = ["src", "stages", "bench", "conf", "docs", "params.yaml", "dvc.yaml", "README.md"]
DOTTED = re.compile(r"\btrain\.(strategy|feature_cache|image_cache)\b")  # anywhere
BARE = re.compile(r"\b(feature_cache|image_cache)\b|^\s+strategy:", re.M)  # in docs, Python comments and strings
MOVED_ENTRY = re.compile(r'^\s*"train\.\w+": ')  # a line of params.MOVED


def files() -> list[Path]:
    paths = [REPO / name for name in SCANNED]
    found = [f for p in paths if p.is_dir() for f in p.rglob("*") if f.suffix in (".py", ".md", ".yaml", ".yml")]
    return sorted(found + [p for p in paths if p.is_file()])


def prose(path: Path, text: str) -> list[tuple[int, str]]:
    """(first line, text) of what people read: every line of a doc or YAML file; a Python file's comments and
    strings (the literal parts of f-strings), not its code."""
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    literal = {tokenize.COMMENT, tokenize.STRING}
    return [(t.start[0], re.sub(r"\{[^{}]*\}", "", t.string)) for t in tokens if t.type in literal]


def retired_names(path: Path, root: Path = REPO) -> list[str]:
    """'file:line: text' of each line holding a retired name."""
    text, rel = path.read_text(), path.relative_to(root).as_posix()
    lines = text.splitlines()
    moved = rel == "src/steeldefect/params.py"
    hits = {i for i, line in enumerate(lines, 1) if DOTTED.search(line)}
    for start, part in prose(path, text):
        hits |= {start + part[: m.start()].count("\n") for m in BARE.finditer(part)}
    return [
        f"{rel}:{i}: {lines[i - 1].strip()}" for i in sorted(hits) if not (moved and MOVED_ENTRY.match(lines[i - 1]))
    ]


def test_moved_holds_the_retired_names():
    assert set(MOVED) == {"train.strategy", "train.feature_cache", "train.image_cache"}


def test_no_retired_param_name_in_messages_comments_and_docs():
    hits = [hit for path in files() for hit in retired_names(path)]
    assert not hits, "retired param names (now environment variables, see params.MOVED):\n" + "\n".join(hits)


def test_the_search_finds_every_form(tmp_path):
    """The search is not blind: each retired form in a copy of the files is found; code identifiers are not."""
    (tmp_path / "a.py").write_text(
        "runtime.feature_cache = STEELDEFECT_FEATURE_CACHE = image_cache_key()  # code: fine\n"
        'x = f"{runtime.image_cache}"\n'
        "# freeze_backbone, head, feature_cache and fine_tune\n"
        'raise UserError("set train.strategy")\n'
        'p = {"image_cache": None}\n'
    )
    (tmp_path / "b.yaml").write_text("train:\n  epochs: 1\n  strategy: mirrored\n")
    (tmp_path / "c.md").write_text("Set STEELDEFECT_FEATURE_CACHE=off.\n\nThe `image_cache` param\n")
    found = [h for name in ("a.py", "b.yaml", "c.md") for h in retired_names(tmp_path / name, tmp_path)]
    assert [h.split(": ")[0] for h in found] == ["a.py:3", "a.py:4", "a.py:5", "b.yaml:3", "c.md:3"]
