"""`CONFIGS` read statically and expanded into one self-contained source per config."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

from forge.agents.configs import ConfigError, parse_configs, variants

ROW = (
    Path(__file__).parent / "fixtures" / "scripts" / "softmax_kernels" / "configs_row.py"
).read_text()

PLAIN = "X = 1\n\n\nclass ModelNew:\n    pass\n"
DECLARED = (
    'CONFIGS = [\n    {"BLOCK": 64, "num_warps": 2},\n    {"BLOCK": 128, "fast": True, "mode": "a"},\n]\n'
    "\n\nclass ModelNew:\n    block = CONFIG['BLOCK']\n"
)


def test_reads_a_literal_list_of_flat_dicts():
    assert parse_configs(DECLARED, 8) == [
        {"BLOCK": 64, "num_warps": 2},
        {"BLOCK": 128, "fast": True, "mode": "a"},
    ]
    assert parse_configs(PLAIN, 8) is None  # nothing declared: a plain candidate
    assert parse_configs("def f(:\n", 8) is None  # the evaluator reports the syntax error
    pinned_by_hand = "CONFIG = {'BLOCK': 8}\nx = CONFIG['BLOCK']\n"
    assert parse_configs(pinned_by_hand, 8) is None


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("x = CONFIG['BLOCK']\n", "`CONFIG` is read but no module-level `CONFIGS`"),
        ("B = 64\nCONFIGS = [{'BLOCK': B}]\n", "must be a literal list of dicts"),
        ("CONFIGS = [{'BLOCK': 2 ** 6}]\n", "must be a literal list of dicts"),
        ("CONFIGS = {'BLOCK': 64}\n", "must be a non-empty list of dicts"),
        ("CONFIGS = []\n", "must be a non-empty list of dicts"),
        ("CONFIGS = [{'BLOCK': [64, 128]}]\n", "values must be literal ints, strings or bools"),
        ("CONFIGS = [{'BLOCK': {'a': 1}}]\n", "values must be literal ints, strings or bools"),
        ("CONFIGS = [{'BLOCK': 1.5}]\n", "values must be literal ints, strings or bools"),
        ("CONFIGS = [{1: 64}]\n", "has a key 1 that is not a name"),
        ("CONFIGS = [{}]\n", "is not a non-empty dict"),
        ("CONFIGS = [{'B': 1}, {'B': 1}]\n", "CONFIGS[1] repeats CONFIGS[0]"),
        ("CONFIGS = [{'B': 1}]\nCONFIGS = [{'B': 2}]\n", "assigned once, at module level"),
        ("CONFIGS = [{'B': 1}]\nCONFIGS += [{'B': 2}]\n", "assigned once, at module level"),
        ("A = CONFIGS = [{'B': 1}]\n", "an assignment of its own"),
        ("CONFIGS = [{'B': {1, [2]}}]\n", "must be a literal list of dicts"),
    ],
)
def test_malformed_configs_say_why(source, reason):
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("*", r"\*")):
        parse_configs(source, 8)


def test_at_most_max_configs():
    three = "CONFIGS = [{'B': 1}, {'B': 2}, {'B': 3}]\n"
    assert len(parse_configs(three, 3)) == 3
    with pytest.raises(ConfigError, match="lists 3 configs; the evaluator tries at most 2"):
        parse_configs(three, 2)


def _run(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<variant>", "exec"), namespace)  # noqa: S102 (our own test source)
    return namespace


def test_each_variant_pins_its_config_and_runs_on_its_own():
    found = variants(DECLARED, 8)
    assert [(v.index, v.config) for v in found] == [
        (1, {"BLOCK": 64, "num_warps": 2}),
        (2, {"BLOCK": 128, "fast": True, "mode": "a"}),
    ]
    for variant in found:
        lines = variant.source.splitlines()
        assert lines[4].startswith("CONFIG = ") and "pinned by the evaluator" in lines[4]
        assert lines[:4] == DECLARED.splitlines()[:4]  # right after the CONFIGS assignment
        namespace = _run(variant.source)
        assert namespace["CONFIG"] == variant.config
        assert namespace["ModelNew"].block == variant.config["BLOCK"]
    assert variants(PLAIN, 8) is None


def test_a_kept_variant_declared_again_is_pinned_afresh():
    kept = variants(DECLARED, 8)[1].source
    again = variants(kept, 8)
    assert [_run(v.source)["CONFIG"] for v in again] == [v.config for v in variants(DECLARED, 8)]
    assert all(v.source.count("CONFIG = ") == 1 for v in again)
    shared_line = DECLARED.replace("\n\n\nclass", "\nCONFIG = {'BLOCK': 1}; Y = 2\n\n\nclass")
    with pytest.raises(ConfigError, match="on lines of its own"):
        variants(shared_line, 8)


def test_the_triton_fixture_expands_into_valid_modules():
    found = variants(ROW, 8)
    assert [v.config["BLOCK"] for v in found] == [64, 1024, 2048]
    for variant in found:
        tree = ast.parse(variant.source)
        pins = [
            s
            for s in tree.body
            if isinstance(s, ast.Assign) and getattr(s.targets[0], "id", "") == "CONFIG"
        ]
        assert len(pins) == 1 and ast.literal_eval(pins[0].value) == variant.config
        assert isinstance(compile(tree, "<variant>", "exec"), types.CodeType)
