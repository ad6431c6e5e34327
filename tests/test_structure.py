"""The package's import graph: no module imports one that (directly or not) imports it back."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'alexnet_jax')


def import_graph(package_dir: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function."""
    modules = {f[:-3] for f in os.listdir(package_dir) if f.endswith('.py') and f != '__init__.py'}
    graph = {}
    for module in modules:
        with open(os.path.join(package_dir, f'{module}.py')) as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == 'alexnet_jax':
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
                'alexnet_jax.'
            ):
                imported.add(node.module.split('.')[1])
            elif isinstance(node, ast.Import):
                imported |= {
                    a.name.split('.')[1]
                    for a in node.names
                    if a.name.count('.') >= 1 and a.name.startswith('alexnet_jax.')
                }
        graph[module] = (imported & modules) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    for name, body in {
        'a': 'from alexnet_jax import b\n',
        'b': 'def f():\n    from alexnet_jax.c import x\n',
        'c': 'import alexnet_jax.a\n',
        'd': 'from alexnet_jax import a\n',
    }.items():
        (tmp_path / f'{name}.py').write_text(body)
    graph = import_graph(str(tmp_path))
    assert graph == {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']
    (tmp_path / 'c.py').write_text('x = 1\n')
    assert find_cycle(import_graph(str(tmp_path))) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {'models', 'towers', 'train', 'steps', 'datasets'} <= set(graph)
    assert find_cycle(graph) is None
