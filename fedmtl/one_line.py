"""One line of text for a message: errors and names from files, plugins or clients.

Every message fedmtl prints is one line; text it did not write itself (an exception's text, a
name a client sent) goes into a message only through :func:`one_line` or :func:`described`, so
that it cannot break the line or forge a line of its own.
"""

from __future__ import annotations

LIMIT = 160
"""The most characters of foreign text one message quotes, unless a caller says otherwise."""

RULE_ERROR_LIMIT = 300
"""The most characters of a cross-task or server rule's error quoted, on a client as on the
server: the checks of a rule's result (:mod:`fedmtl.aggregation.rule`) say in full what to
change, and a plugin's own text stays one line."""


def one_line(text: object, limit: int | None = LIMIT) -> str:
    """``text`` as one printable line of at most ``limit`` characters (``None``: no limit).

    Runs of white space (line breaks included) become one space; other characters that do not
    print (terminal escapes) become ``?``.
    """
    flat = " ".join(str(text).split())
    if limit is not None:
        flat = flat[:limit]
    return "".join(c if c.isprintable() else "?" for c in flat)


def visible(text: object) -> str:
    """``text`` with every character that would not print (a line break, a tab, a terminal
    escape) written as its Python escape (``\\n``, ``\\t``, ``\\x1b``): one line showing all that
    is there, for names shown in a document (a folder named with a line break cannot start a
    line of its own in ``report.md``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def described(exc: BaseException, limit: int | None = LIMIT) -> str:
    """``exc`` as one line: ``"<type>: <text>"``, or its type's name when it has no text."""
    text = str(exc)
    return one_line(f"{type(exc).__name__}: {text}" if text.strip() else type(exc).__name__, limit)


def raised_at(error: BaseException) -> str:
    """Where ``error`` was raised: ``"<file>, line <n>, in <function>"`` of the innermost frame
    of the user's code (not of an installed library or of Python's own), else of its innermost."""
    import os
    import sys
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "no traceback"
    libraries = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    own = [f for f in frames if not os.path.realpath(f.filename).startswith(libraries)]
    last = (own or frames)[-1]
    return f"{last.filename}, line {last.lineno}, in {last.name}"


def error_and_traceback(exc: BaseException, limit: int = 1000, keep: int = 2000) -> tuple[str, str]:
    """A failure's ``(error, traceback)``: :func:`described` (at most ``limit`` characters), and
    the last ``keep`` characters of its traceback (what a sweep records of a failed run)."""
    import traceback

    return described(exc, limit), "".join(traceback.format_exception(exc))[-keep:]


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` and the noun agreeing with it: ``counted(1, "seed")`` is ``"1 seed"``,
    ``counted(2, "reply", "replies")`` is ``"2 replies"`` (default plural: ``singular + "s"``)."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def shell_path(path: object) -> str:
    """``path`` as one word of a shell command a user can paste (quoted when it has spaces or
    other characters the shell would split or expand)."""
    import shlex

    return shlex.quote(str(path))
