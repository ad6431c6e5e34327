"""The documents' links lead somewhere: every figure's log link names a committed file.

Relative links in the project's Markdown files must name a file or folder of the checkout, and
a `#fragment` must name a heading of the target the way GitHub derives heading anchors.
"""

import functools
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {'.venv', '.git', '.pytest_cache', 'runs', 'node_modules', '.whl'}
LINK = re.compile(r'\]\(([^)\s]+)\)')
HEADING = re.compile(r'^#{1,6}\s+(.*?)\s*#*\s*$')


@functools.cache
def _committed() -> frozenset[str] | None:
    """The checkout's tracked paths and their folders; None outside a git checkout."""
    if shutil.which('git') is None or not (ROOT / '.git').exists():
        return None
    listed = subprocess.run(
        ['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split('\0')
    paths = set()
    for path in filter(None, listed):
        parts = pathlib.PurePosixPath(path).parts
        paths.update('/'.join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(paths)


def _markdown_files() -> list[pathlib.Path]:
    return sorted(
        p
        for p in ROOT.rglob('*.md')
        if not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts[:-1])
    )


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith('```'):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, punctuation dropped."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link renders as its text
    text = text.lower()
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
    if committed is None or not path.is_relative_to(ROOT) or path == ROOT:
        return True
    return path.relative_to(ROOT).as_posix() in committed


def broken_links(path: pathlib.Path) -> list[str]:
    broken = []
    for line in _prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r'^[a-z]+:', target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition('#')
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                broken.append(f'{target} (no such file)')
            elif not _is_committed(resolved):
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


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / 'here.md').write_text('# Top\n[ok](#top) [gone](missing.log) [bad](#nowhere)\n')
    assert broken_links(tmp_path / 'here.md') == [
        'missing.log (no such file)',
        '#nowhere (no heading with that anchor)',
    ]


@pytest.mark.skipif(_committed() is None, reason='not a git checkout')
def test_a_file_git_does_not_track_is_not_committed():
    assert _is_committed(ROOT / 'README.md')
    assert _is_committed(ROOT / 'experiments' / 'logs')
    assert not _is_committed(ROOT / 'experiments' / 'logs' / 'never-added.log')


@pytest.mark.parametrize('path', _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_committed_file_or_heading(path):
    assert broken_links(path) == []
