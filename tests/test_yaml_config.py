"""The one strict YAML loader (retrofit.yaml_config): unknown keys with a did-you-mean, wrong types,
missing files, duplicate keys and invalid YAML are errors that name the file and line; it also reads
the adapter and benchmark specs shipped in the repository into their dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from retrofit.yaml_config import (
    ConfigError,
    ConfigFileNotFoundError,
    ConfigTypeError,
    LocatedDict,
    from_dict,
    load_dataclass,
    load_yaml,
    locate,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    steps: int = 1
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    pair: tuple[str, str] = ("a", "b")
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_file_becomes_the_dataclass(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "name: x\ninner:\n  steps: 3\n  rate: 1e-3\npair: [p, q]\nextra: {k: {v: 1}}\n"
    )
    loaded = load_dataclass(Outer, path)
    assert loaded == Outer(name="x", inner=Inner(steps=3, rate=1e-3), pair=["p", "q"],
                           extra={"k": {"v": 1}})  # fmt: skip
    assert type(loaded.extra["k"]) is dict  # Any / dict values come back as plain dicts
    assert load_dataclass(Outer, path, ["inner.steps=7", "tags=[a]"]).inner.steps == 7


@pytest.mark.parametrize(
    ("text", "error", "pattern"),
    [
        ("name: x\ninner:\n  stesp: 3\n", ConfigError,
         r"spec\.yaml:3: inner\.stesp: unknown key\. did you mean 'steps'\? Valid keys: mode, "),
        ("name: x\n\ninner:\n  steps: three\n", ConfigTypeError,
         r"spec\.yaml:4: inner\.steps: expected an integer, got 'three' \(str\)"),
        ("name: x\ninner:\n  mode: fats\n", ConfigError,
         r"spec\.yaml:3: inner\.mode: 'fats' is not one of 'fast', 'slow'\. Did you mean 'fast'"),
        ("name: x\npair: [a, b, c]\n", ConfigTypeError, r"spec\.yaml:2: pair: expected 2 items"),
        ("name: x\ntags: [a, 2]\n", ConfigTypeError, r"spec\.yaml:2: tags\[1\]: expected a string"),
        ("name: x\ninner: 5\n", ConfigTypeError, r"spec\.yaml:2: inner: expected a mapping"),
        ("name: x\nlimit: -1\n", ConfigError, r"spec\.yaml:2: spec: limit must be >= 0"),
        ("inner: {}\n", ConfigError, r"spec: missing required key\(s\) name"),
        ("name: x\nname: y\n", ConfigError, r"spec\.yaml:2: key 'name' is written twice \(first at line 1\)"),
        ("name: [x\n", ConfigError, r"spec\.yaml:2: spec is not valid YAML"),
        ("- name\n", ConfigError, r"spec .*spec\.yaml': top level must be a mapping, got list"),
    ],
)  # fmt: skip
def test_errors_name_the_file_line_and_key(
    tmp_path: Path, text: str, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        load_dataclass(Outer, _write(tmp_path, text), what="spec")


def test_error_types_are_the_builtin_ones_too(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"spec '.*nope\.yaml' does not exist"):
        load_yaml(tmp_path / "nope.yaml", what="spec")
    assert issubclass(ConfigFileNotFoundError, ConfigError)
    with pytest.raises(TypeError, match="expected an integer"):
        from_dict(Inner, {"steps": "3"})
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(Inner, {"step": 3})


def test_overrides_and_extends_are_located(tmp_path: Path) -> None:
    _write(tmp_path, "name: base\ninner:\n  steps: 2\n  rate: 0.1\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\ninner:\n  rate: 0.2\n", "child.yaml")
    raw = load_yaml(child, extends_key="extends")
    assert isinstance(raw, LocatedDict) and "extends" not in raw
    assert raw["inner"] == {"steps": 2, "rate": 0.2}
    assert locate(raw, "inner.steps").endswith("base.yaml:3")
    assert locate(raw, "inner.rate").endswith("child.yaml:3")
    assert locate(raw, "inner.nothing").endswith("child.yaml:2")  # the enclosing section
    with pytest.raises(ConfigError, match=r"command-line override: inner\.steps: expected an int"):
        load_dataclass(Outer, child, ["inner.steps=x"], extends_key="extends")
    _write(tmp_path, "extends: loop.yaml\n", "loop.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "loop.yaml", extends_key="extends")


def test_the_shipped_adapter_and_benchmark_specs_load_through_it() -> None:
    """The adapter and benchmark spec dataclasses are readable by the same loader (their modules
    switch over to it later); the result equals what their own loaders build."""
    from retrofit.adapter.spec import AdapterSpec
    from retrofit.evaluation.specs import EvalSpec, load_spec

    for path in sorted((REPO / "adapters").glob("*.yaml")):
        raw = load_yaml(path, what="adapter spec")
        raw.setdefault("name", path.stem)
        assert from_dict(AdapterSpec, raw, what="adapter spec") == AdapterSpec.from_yaml(path)
    for path in sorted((REPO / "eval").glob("*.yaml")):
        spec = from_dict(EvalSpec, load_yaml(path, what="benchmark spec"), what="benchmark spec")
        spec.path = str(path)
        assert spec == load_spec(path)
    with pytest.raises(
        ConfigError, match=r"x\.yaml:2: lora\.dropuot: unknown key\. did you mean 'dropout'"
    ):
        raw = LocatedDict(kind="flexmdm")
        from_dict(AdapterSpec, {**raw, "lora": _lora_with_typo()})


def _lora_with_typo() -> LocatedDict:
    section = LocatedDict(dropuot=0.1)
    section.locations["dropuot"] = "x.yaml:2"
    return section
