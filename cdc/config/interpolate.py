"""``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``${VAR:?message}`` in config values.

Applied to every string in the YAML tree before validation; ``$$`` is a literal ``$``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigProblem

__all__ = ["interpolate"]

_PATTERN = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}"
)


_OPENING = re.compile(r"\$\$|\$\{")


def _expand(text: str, env: Mapping[str, str], path: str, problems: list[ConfigProblem]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", ":?"):
            missing = not value
        else:
            missing = value is None
        if not missing:
            return value  # type: ignore[return-value]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            problems.append(ConfigProblem(path, f"${{{name}}}: {arg or 'must be set'}"))
        else:
            problems.append(ConfigProblem(path, f"environment variable {name} is not set "
                                                f"(use ${{{name}:-default}} for a default)"))
        return ""

    for m in _OPENING.finditer(text):
        if m.group(0) == "${" and not _PATTERN.match(text, m.start()):
            close = text.find("}", m.start())
            if close < 0:
                problems.append(ConfigProblem(path, f"unclosed {text[m.start():m.start() + 40]} "
                                                    f"(write ${{NAME}} or ${{NAME:-default}})"))
            else:
                problems.append(ConfigProblem(path, f"not a variable: {text[m.start():close + 1]} "
                                                    f"(write ${{NAME}}, ${{NAME:-default}}, or $$ for a literal $)"))
            return text
    return _PATTERN.sub(sub, text)


def interpolate(tree: Any, env: Mapping[str, str], problems: list[ConfigProblem],
                path: str = "") -> Any:
    """A copy of ``tree`` with every string expanded; problems are appended."""
    if isinstance(tree, str):
        return _expand(tree, env, path, problems) if "$" in tree else tree
    if isinstance(tree, dict):
        return {k: interpolate(v, env, problems, _join(path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [interpolate(v, env, problems, f"{path}[{i}]") for i, v in enumerate(tree)]
    return tree


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else (str(key) or repr(key))  # an empty key is named too
