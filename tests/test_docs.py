"""The documents' links lead somewhere: every figure's log link names a committed file.

Relative links in the project's Markdown files must name a file or folder that git tracks in
this checkout, and a `#fragment` must name a heading of the target the way GitHub derives
heading anchors.
"""

import functools
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {'.venv', 'venv', '.git', '.pytest_cache', 'runs', 'node_modules', '.whl'}
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
# [text](target) or [text](target "title"); and reference definitions: [id]: target
LINK = re.compile(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
DEFINITION = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*(\S+)')
HEADING = re.compile(r'^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$')
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')


def _git(*args: str) -> list[str] | None:
    """The NUL-separated output of a git command in the checkout; None outside one."""
    if shutil.which('git') is None or not (ROOT / '.git').exists():
        return None
    out = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split('\0') if p]


@functools.cache
def _committed() -> frozenset[str] | None:
    """The checkout's tracked paths and their folders; None outside a git checkout."""
    listed = _git('ls-files', '-z')
    if listed is None:
        return None
    paths = set()
    for path in listed:
        parts = pathlib.PurePosixPath(path).parts
        paths.update('/'.join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(paths)


def _markdown_files() -> list[pathlib.Path]:
    """The project's own Markdown files: what git tracks or would add, else a walk of the tree."""
    listed = _git('ls-files', '-z', '--cached', '--others', '--exclude-standard', '*.md')
    if listed is not None:
        return sorted({ROOT / p for p in listed if (ROOT / p).is_file()})
    return sorted(
        p
        for p in ROOT.rglob('*.md')
        if not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts[:-1])
    )


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (``` or ~~~, closed by a like fence as long)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
            else:
                lines.append(line)
        elif _closes(line, match, fence):
            fence = None
    return lines


def _closes(line: str, match: re.Match | None, fence: str) -> bool:
    """A closing fence: the opener's character, at least as many, and nothing after them."""
    if match is None or match.group(1)[0] != fence[0] or len(match.group(1)) < len(fence):
        return False
    return not line.strip().strip(fence[0])


def _outside_code(text: str, change) -> str:
    """``change`` applied to the parts of ``text`` outside inline code spans."""
    pieces, last = [], 0
    for match in CODE_SPAN.finditer(text):
        pieces += [change(text[last : match.start()]), match.group(2)]
        last = match.end()
    return ''.join([*pieces, change(text[last:])])


def _rendered(text: str) -> str:
    text = re.sub(r'<[^>]+>', '', text)  # inline HTML tags
    text = re.sub(r'(?<!\w)(_{1,2})(?=\S)(.+?)(?<=\S)\1(?!\w)', r'\2', text)  # _em_, __strong__
    return text


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, punctuation dropped."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link renders as its text
    text = _outside_code(text, _rendered).lower()
    text = ''.join(c for c in text if c.isalnum() or c in ' -_')
    return text.replace(' ', '-')


def anchors(path: pathlib.Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_anchor(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f'{slug}-{count}')
    return out


def _is_committed(path: pathlib.Path) -> bool:
    committed = _committed()
    if committed is None or path == ROOT:
        return True
    return path.relative_to(ROOT).as_posix() in committed


def _targets(line: str) -> list[str]:
    line = CODE_SPAN.sub('', line)  # `[a](b)` inside code is not a link
    return LINK.findall(line) + DEFINITION.findall(line)


def broken_links(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """The relative links of a Markdown file under ``root`` that lead nowhere, and why."""
    broken = []
    for line in _prose_lines(path.read_text()):
        for target in _targets(line):
            if re.match(r'^[a-z]+:', target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition('#')
            if not file_part:
                resolved = path
            elif file_part.startswith('/'):  # GitHub reads it from the repository's root
                resolved = root / file_part.lstrip('/')
            else:
                resolved = path.parent / file_part
            resolved = pathlib.Path(os.path.normpath(resolved))  # no symlink followed
            if not resolved.is_relative_to(root):
                broken.append(f'{target} (outside the repository)')
            elif not resolved.exists():
                broken.append(f'{target} (no such file)')
            elif root == ROOT and not _is_committed(resolved):
                broken.append(f'{target} (not committed: git add it)')
            elif fragment and resolved.suffix == '.md' and fragment not in anchors(resolved):
                broken.append(f'{target} (no heading with that anchor)')
    return broken


def test_the_anchor_rule_matches_headings_github_renders():
    # Anchors as github.com renders them for headings of this repository's RESULTS.md.
    assert github_anchor("conv3-5 in Winograd's algorithm (kept)") == (
        'conv3-5-in-winograds-algorithm-kept'
    )
    assert github_anchor('Two towers on two devices (issue 8)') == (
        'two-towers-on-two-devices-issue-8'
    )
    assert github_anchor('GPU: one H200 ([`logs/a-b/`](logs/a-b/))') == 'gpu-one-h200-logsa-b'
    # Emphasis marks go, the underscores of code and of words stay.
    assert github_anchor('**bold** _em_ and __b__ `a_b` train_step') == (
        'bold-em-and-b-a_b-train_step'
    )


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / 'here.md').write_text(
        '# Top\n[ok](#top) [gone](missing.log) [bad](#nowhere) [up](../elsewhere.md)\n'
        '`[code](not-a-link)`\n[ref]: also-missing.txt\n'
        '~~~\n[fenced](not-checked)\n~~~\n'
    )
    assert broken_links(tmp_path / 'here.md', root=tmp_path) == [
        'missing.log (no such file)',
        '#nowhere (no heading with that anchor)',
        '../elsewhere.md (outside the repository)',
        'also-missing.txt (no such file)',
    ]


@pytest.mark.skipif(_committed() is None, reason='not a git checkout')
def test_a_file_git_does_not_track_is_not_committed():
    assert _is_committed(ROOT / 'README.md')
    assert _is_committed(ROOT / 'experiments' / 'logs')
    assert not _is_committed(ROOT / 'experiments' / 'logs' / 'never-added.log')


@pytest.mark.parametrize('path', _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_committed_file_or_heading(path):
    assert broken_links(path) == []
