"""Every config field with its value and what it means.

    python -m alexnet_jax.config_help [--config configs/X.py] [--config.FIELD=VALUE ...]

Without ``--config`` the values are ``configs/default.py``'s. The descriptions are the trailing
comments of ``configs/default.py`` itself (read with ``ast`` and ``tokenize``), so the file stays
the one place that documents a field; a field without a comment is listed with none.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path

import ml_collections

_SECTION = re.compile(r'-{3,}\s*(.*?)\s*-{3,}')  # '# --- Data (alexnet_jax/...) ---'


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    section: str  # the '# --- ... ---' heading above it ('' if none)
    description: str  # its trailing comment ('' if none)


def default_config_path() -> Path:
    """configs/default.py, next to the installed or checked-out ``configs`` package."""
    from configs import default

    return Path(default.__file__)


def _config_variable(tree: ast.Module) -> str:
    """The name `get_config` returns (``c`` in configs/default.py)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == 'get_config':
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.Name):
                    return stmt.value.id
    raise ValueError('no `get_config` returning a local variable')


def parse_fields(source: str) -> list[Field]:
    """The fields a config file assigns (``c.NAME = ...``), in order, with their comments."""
    tree = ast.parse(source)
    variable = _config_variable(tree)
    comments: dict[int, tuple[int, str]] = {}  # line -> (column, text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string[1:].strip())
    sections = sorted(
        (line, match.group(1))
        for line, (_, text) in comments.items()
        if (match := _SECTION.fullmatch(text))
    )
    found: list[tuple[int, Field]] = []
    seen: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == variable
            ) or (target.attr in seen):
                continue
            column, text = comments.get(node.end_lineno, (-1, ''))
            trailing = text if column >= node.end_col_offset else ''
            section = ''
            for line, heading in sections:
                if line < node.lineno:
                    section = heading
            found.append((node.lineno, Field(target.attr, section, trailing)))
            seen.add(target.attr)
    return [field for _, field in sorted(found, key=lambda pair: pair[0])]


def default_fields() -> list[Field]:
    """The fields of configs/default.py with their sections and descriptions."""
    return parse_fields(default_config_path().read_text())


def _value(value) -> str:
    return repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def format_help(config: ml_collections.ConfigDict | None = None, source: str | None = None) -> str:
    """One line per field: ``name = value  # description``, grouped by section.

    With ``config`` (read from the file ``source``), its values are shown, and ``[default: X]``
    where one differs.
    """
    from configs import default

    defaults = default.get_config()
    config = defaults if config is None else config
    fields = default_fields()
    known = {f.name for f in fields}
    fields += [Field(name, 'Other', '') for name in config if name not in known]
    where = source or default_config_path().name
    lines = [f'Config fields of {where} (set one with --config.FIELD=VALUE):']
    fields = [f for f in fields if f.name in config]
    width = max(len(f.name) for f in fields)
    rows = []  # (section, 'name = value', note)
    for field in fields:
        value = _value(config[field.name])
        note = field.description
        if field.name in defaults and _value(defaults[field.name]) != value:
            note = f'{note} [default: {_value(defaults[field.name])}]'.strip()
        rows.append((field.section, f'  {field.name:<{width}} = {value}', note))
    column = max(len(assignment) for _, assignment, _ in rows) + 2
    section = None
    for heading, assignment, note in rows:
        if heading != section:
            section = heading
            lines += ['', section or 'General']
        lines.append(f'{assignment:<{column}}# {note}' if note else assignment)
    return '\n'.join(lines)


def main(argv: list[str]) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from alexnet_jax import cli

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    cli.quiet_libraries()
    config = flags.FLAGS.config
    source = config_flags.get_config_filename(flags.FLAGS['config']) if config else None
    print(format_help(config, source))


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        'config', None, 'A config file (configs/*.py) whose values to show; default: default.py.'
    )


def run() -> None:
    """The console script's entry point."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == '__main__':
    run()
