"""The one registry type behind methods, selectors, rules, backends, architectures and commands:
built-in modules of a package, third-party plug-ins through entry points, one way to list and get."""

import sys

import pytest

from vitdeploy.errors import VitDeployError
from vitdeploy.registry import Registry

FRUIT_MODULES = {
    "fruits/__init__.py": "from vitdeploy.registry import Registry\n"
                          "FRUITS = Registry('fruit', group='test.fruits', package=__name__)\n",
    "fruits/apple.py": "from fruits import FRUITS\n\n@FRUITS.register\ndef apple():\n    return 'red'\n",
    "fruits/banana.py": "from fruits import FRUITS\n\n@FRUITS.register\ndef banana():\n    return 'yellow'\n",
    "fruits/_helpers.py": "raise RuntimeError('a helper module is not a plug-in and is never imported')\n",
}

ENGINE_MODULES = {
    "engines/__init__.py": "",
    "engines/fast.py": "class Fast:\n    name = 'fast'\n\nENGINE = Fast\n",
    "engines/slow.py": "class Slow:\n    name = 'slow'\n\nENGINE = Slow\n",
}


@pytest.fixture
def fruits(install_plugin):
    install_plugin(FRUIT_MODULES, {})
    from fruits import FRUITS

    return FRUITS


@pytest.fixture
def engines(install_plugin):
    install_plugin(ENGINE_MODULES, {})
    return Registry("engine", group="test.engines", package="engines", attribute="ENGINE", instances=True)


def test_modules_of_the_package_register_themselves_and_helpers_are_skipped(fruits):
    assert fruits.names() == ["apple", "banana"]
    assert fruits.get("banana")() == "yellow"
    assert list(fruits.items()) == ["apple", "banana"] and "apple" in fruits and "pear" not in fruits


def test_names_filter_with_shell_patterns(fruits):
    assert fruits.names("b*") == ["banana"]
    assert fruits.names("*an*") == ["banana"]


def test_an_unknown_name_is_a_user_error_naming_the_choices(fruits):
    with pytest.raises(VitDeployError, match="unknown fruit 'pear'; choose one of apple, banana"):
        fruits.get("pear")


def test_one_module_per_plugin_is_listed_without_importing_and_imported_when_asked(engines):
    assert engines.names() == ["fast", "slow"]
    assert "engines.fast" not in sys.modules and "engines.slow" not in sys.modules
    fast = engines.get("fast")
    assert type(fast).__name__ == "Fast" and engines.get("fast") is fast  # a class is held as its one instance
    assert "engines.fast" in sys.modules and "engines.slow" not in sys.modules


def test_the_same_object_twice_is_a_no_op_and_another_under_a_taken_name_is_refused():
    registry = Registry("colour", group="test.colours")

    def red():
        return 1

    assert registry.register(red) is red and registry.register(red) is red
    with pytest.raises(ValueError, match="two colours are named 'red'"):
        registry.register(lambda: 2, name="red")
    assert registry.get("red") is red


def test_installed_packages_register_through_entry_points(engines, install_plugin):
    install_plugin({"third_party.py": "class Turbo:\n    name = 'turbo'\n"},
                   {"test.engines": {"turbo": "third_party:Turbo"}})
    assert engines.names() == ["fast", "slow", "turbo"]
    assert type(engines.get("turbo")).__name__ == "Turbo"


def test_entry_points_of_a_self_registering_registry_load_with_the_listing(fruits, install_plugin):
    install_plugin({"more_fruit.py": "def cherry():\n    return 'dark red'\n"},
                   {"test.fruits": {"cherry": "more_fruit:cherry"}})
    assert fruits.names() == ["apple", "banana", "cherry"] and fruits.get("cherry")() == "dark red"


@pytest.mark.parametrize("source, value, message", [
    ("raise ImportError('needs a library that is not installed')", "broken:Thing",
     "the engine plug-in 'thing' (broken:Thing) failed to load: ImportError: needs a library that is not installed"),
    ("class Thing:\n    name = 'other'\n", "broken:Thing",
     "the engine plug-in 'thing' (broken:Thing) calls itself 'other'"),
    ("", "broken:Missing", "the engine plug-in 'thing' (broken:Missing) failed to load: AttributeError"),
])
def test_a_broken_plugin_is_one_user_error_naming_it(engines, install_plugin, source, value, message):
    install_plugin({"broken.py": source}, {"test.engines": {"thing": value}})
    with pytest.raises(VitDeployError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        engines.get("thing")
    assert type(engines.get("fast")).__name__ == "Fast"  # the others still work
