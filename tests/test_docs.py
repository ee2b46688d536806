"""The docs build's griffe extension (docs/sphinx_roles.py): Sphinx roles become optional cross-references."""

import importlib.util
from pathlib import Path

import griffe

spec = importlib.util.spec_from_file_location("sphinx_roles", Path(__file__).parents[1] / "docs" / "sphinx_roles.py")
sphinx_roles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sphinx_roles)

CODE = '''
"""See :class:`~pkg.mod.Thing` and :func:`helper`."""

def helper():
    """Calls :meth:`Thing.run` and :class:`os.PathLike`."""

class Thing:
    """Runs with :meth:`run()`."""

    def run(self):
        """Nothing to link here."""
'''


def test_roles_become_optional_autorefs_resolved_in_their_scope():
    with griffe.temporary_visited_module(CODE, module_name="mod") as module:
        sphinx_roles.SphinxRoles().on_package(pkg=module, loader=None)
        assert module.docstring.value == (
            'See <autoref optional identifier="pkg.mod.Thing"><code>Thing</code></autoref> and '
            '<autoref optional identifier="mod.helper"><code>helper</code></autoref>.'
        )
        assert module["helper"].docstring.value == (
            'Calls <autoref optional identifier="mod.Thing.run"><code>Thing.run</code></autoref> and '
            '<autoref optional identifier="os.PathLike"><code>os.PathLike</code></autoref>.'
        )
        assert module["Thing"].docstring.value == (
            'Runs with <autoref optional identifier="mod.Thing.run"><code>run</code></autoref>.'
        )
        assert module["Thing.run"].docstring.value == "Nothing to link here."
