"""core/schema.py: strict YAML <-> frozen dataclass conversion, safe parsing, atomic writing."""

import dataclasses
from typing import Literal

import pytest

from exitflow.core.errors import ConfigError
from exitflow.core.schema import (
    MAX_YAML_BYTES,
    FieldError,
    FrozenMap,
    dump_yaml,
    from_data,
    load_file,
    load_json_file,
    parse_yaml,
    read_json,
    read_yaml,
    to_data,
    write_file,
    write_json_file,
)


@dataclasses.dataclass(frozen=True)
class Head:
    name: str
    threshold: float | None = None
    policy: Literal["max_prob", "margin"] = "max_prob"

    def __post_init__(self):
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise FieldError("threshold", f"must be in (0, 1]; got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    blocks: tuple[str, ...]
    head: Head
    depth: int = 2
    folding: FrozenMap[str, int] = dataclasses.field(default_factory=FrozenMap)
    mixed: int | str = 0
    flag: bool = False


@dataclasses.dataclass(frozen=True)
class Doc:
    model: str
    stages: tuple[Stage, ...]


def _doc():
    return {
        "model": "lenet",
        "stages": [
            {"name": "s0", "blocks": ["conv0"], "head": {"name": "e0", "threshold": 0.5}, "folding": {"conv0": 2}},
            {"name": "s1", "blocks": ["conv1", "fc0"], "head": {"name": "e1", "policy": "margin"}, "mixed": "x"},
        ],
    }


def test_from_data_builds_nested_frozen_objects():
    doc = from_data(Doc, _doc(), source="d.yaml")
    assert doc.model == "lenet"
    assert doc.stages[0].blocks == ("conv0",)
    assert doc.stages[0].head == Head("e0", 0.5)
    assert doc.stages[0].folding == FrozenMap({"conv0": 2})
    assert doc.stages[1].head.policy == "margin" and doc.stages[1].head.threshold is None
    assert doc.stages[1].mixed == "x" and doc.stages[0].mixed == 0
    assert doc.stages[1].depth == 2  # default kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.model = "cnv"
    hash(doc)  # frozen, FrozenMap included: hashable


def test_to_data_is_the_inverse_of_from_data():
    doc = from_data(Doc, _doc())
    data = to_data(doc)
    assert from_data(Doc, data) == doc
    assert data["stages"][0]["blocks"] == ["conv0"] and isinstance(data["stages"][0]["folding"], dict)
    assert list(data) == ["model", "stages"]


def test_int_is_accepted_as_float_but_not_bool_as_int():
    assert from_data(Head, {"name": "e", "threshold": 1}).threshold == 1.0
    assert isinstance(from_data(Head, {"name": "e", "threshold": 1}).threshold, float)
    with pytest.raises(ConfigError, match=r"^f.yaml: stages\[0\]\.depth: must be an integer; got True \(bool\)$"):
        data = _doc()
        data["stages"][0]["depth"] = True
        from_data(Doc, data, source="f.yaml")
    with pytest.raises(ConfigError, match=r"^threshold: must be a number; got True \(bool\)$"):
        from_data(Head, {"name": "e", "threshold": True})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(extra=1), r"^f\.yaml: extra: unknown key; allowed keys here: model, stages$"),
        (lambda d: d.pop("model"), r"^f\.yaml: model: missing required key$"),
        (
            lambda d: d["stages"][1].update(nme="x"),
            r"^f\.yaml: stages\[1\]\.nme: unknown key; allowed keys here: name,",
        ),
        (
            lambda d: d["stages"][0]["head"].update(threshold=1.5),
            r"^f\.yaml: stages\[0\]\.head\.threshold: must be in \(0, 1\]; got 1\.5$",
        ),
        (
            lambda d: d["stages"][0]["head"].update(policy="entropy"),
            r"^f\.yaml: stages\[0\]\.head\.policy: must be one of 'max_prob', 'margin'; got 'entropy' \(str\)$",
        ),
        (
            lambda d: d["stages"][0]["head"].update(threshold=float("nan")),
            r"^f\.yaml: stages\[0\]\.head\.threshold: must be a finite number; got nan$",
        ),
        (
            lambda d: d["stages"][0].update(blocks="conv0"),
            r"^f\.yaml: stages\[0\]\.blocks: must be a list; got 'conv0'",
        ),
        (lambda d: d["stages"][0]["blocks"].append(3), r"^f\.yaml: stages\[0\]\.blocks\[1\]: must be a string; got 3"),
        (lambda d: d["stages"][0].update(folding=[1]), r"stages\[0\]\.folding: must be a mapping of name: value"),
        (lambda d: d["stages"][0].update(folding={1: 2}), r"stages\[0\]\.folding: key 1 must be a str$"),
        (lambda d: d["stages"][0].update(folding={"a": "b"}), r"stages\[0\]\.folding\.a: must be an integer; got 'b'"),
        (lambda d: d["stages"][0].update(mixed=1.5), r"stages\[0\]\.mixed: must be int or str; got 1\.5 \(float\)$"),
        (lambda d: d["stages"][0].update(flag="yes"), r"stages\[0\]\.flag: must be true or false; got 'yes' \(str\)$"),
        (
            lambda d: d["stages"].__setitem__(0, "s0"),
            r"^f\.yaml: stages\[0\]: must be a mapping with keys name, blocks",
        ),
    ],
)
def test_bad_values_name_the_file_and_key_path(mutate, message):
    data = _doc()
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        from_data(Doc, data, source="f.yaml")


def test_a_long_value_is_shortened_in_the_message():
    with pytest.raises(ConfigError, match=r"^name: must be a string; got b'x{55}\.\.\. \(bytes\)$"):
        from_data(Head, {"name": b"x" * 200})


def test_frozen_map_is_an_immutable_ordered_hashable_mapping():
    m = FrozenMap([("b", 1), ("a", 2)])
    assert list(m) == ["b", "a"] and len(m) == 2 and m["a"] == 2
    assert m == FrozenMap({"b": 1, "a": 2}) and hash(m) == hash(FrozenMap({"b": 1, "a": 2}))
    assert m != FrozenMap({"b": 1, "a": 3})
    assert (m == {"b": 1, "a": 2}) is False  # only equal to another FrozenMap
    with pytest.raises(TypeError):
        m["c"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        m.x = 1  # __slots__: no new attributes
    assert repr(m) == "FrozenMap({'b': 1, 'a': 2})"


def test_parse_yaml_is_safe_and_refuses_duplicate_keys():
    assert parse_yaml("a: 1\nb: [x, y]\n") == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(ConfigError, match=r"^c\.yaml: malformed YAML: "):
        parse_yaml("!!python/object/apply:os.getpid []\n", "c.yaml")
    with pytest.raises(
        ConfigError, match=r"^c\.yaml: line 3: duplicate key 'a' \(first at line 1\); keep one of them$"
    ):
        parse_yaml("a: 1\nb: 2\na: 3\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"duplicate key 'k' \(first at line 2\)"):
        parse_yaml("top:\n  k: 1\n  k: 2\n")
    with pytest.raises(ConfigError, match=r"^c\.yaml: malformed YAML: line 2, column 1: expected ',' or ']'"):
        parse_yaml("a: [1, 2\n", "c.yaml")
    # a merge key may be overridden by the keys next to it
    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}


def test_parse_yaml_does_not_run_code(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError):
        parse_yaml(f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    assert not marker.exists()


def test_read_yaml_refuses_missing_oversized_binary_and_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found$"):
        read_yaml(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" + "#" * 200)
    with pytest.raises(ConfigError, match=r"big\.yaml: 205 bytes is over the 100-byte limit for a YAML file"):
        read_yaml(big, max_bytes=100)
    assert read_yaml(big, max_bytes=205) == {"a": 1}
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a text file \(expected UTF-8 YAML\)$"):
        read_yaml(binary)
    with pytest.raises(ConfigError, match=r": is a directory, expected a YAML file$"):
        read_yaml(tmp_path)
    assert MAX_YAML_BYTES == 1 << 20


def test_load_file_and_write_file_round_trip(tmp_path):
    doc = from_data(Doc, _doc())
    (tmp_path / "sub").mkdir()
    path = write_file(doc, tmp_path / "sub" / "d.yaml")
    assert path == tmp_path / "sub" / "d.yaml"
    assert load_file(Doc, path) == doc
    text = path.read_text(encoding="utf-8")
    assert text == dump_yaml(doc)
    assert text.index("model") < text.index("stages")  # declaration order, not sorted
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["d.yaml"]  # no temporary file left behind


def test_load_file_names_the_file_in_every_error(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: file is empty$"):
        load_file(Doc, empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: lenet\nstages:\n  - name: s0\n    blocks: [conv0]\n    head: {name: e, threshold: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: stages\[0\]\.head\.threshold: must be in \(0, 1\]"):
        load_file(Doc, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"^{listing}: must be a mapping with keys model, stages; got \[1, 2\]$"):
        load_file(Doc, listing)


def test_load_json_file_asks_the_readers_check_before_the_schema(tmp_path):
    doc = from_data(Doc, _doc())
    path = write_json_file(doc, tmp_path / "d.json")
    seen = []

    def check(data):
        seen.append(data)
        return None if isinstance(data, dict) and "model" in data else "expected a design, got something else"

    assert load_json_file(Doc, path, "write it again", check=check) == doc
    assert seen == [to_data(doc)]
    path.write_text('{"stages": []}')
    with pytest.raises(ConfigError) as err:
        load_json_file(Doc, path, "write it again", check=check)
    assert str(err.value) == f"{path}: expected a design, got something else; write it again"
    with pytest.raises(ConfigError) as err:  # without the check, the schema's own words
        load_json_file(Doc, path, "write it again")
    assert str(err.value) == f"{path}: model: missing required key; write it again"


def test_json_readers_name_the_file_as_the_caller_asks_and_refuse_what_is_not_json(tmp_path):
    path = tmp_path / "d.json"
    with pytest.raises(ConfigError) as err:
        read_json(path, "run the sweep", name="pareto.json")
    assert str(err.value) == "pareto.json: missing; run the sweep"
    path.write_bytes(b'{"model": "lenet", ')  # truncated
    with pytest.raises(ConfigError) as err:
        read_json(path, "run the sweep", name="pareto.json")
    assert str(err.value) == "pareto.json: unreadable or not JSON (JSONDecodeError); run the sweep"
    path.write_text('{"stages": []}')
    with pytest.raises(ConfigError) as err:
        load_json_file(Doc, path, "write it again", name="d.json")
    assert str(err.value) == "d.json: model: missing required key; write it again"


def test_dump_yaml_set_only_writes_the_fields_away_from_their_defaults_and_reads_back(tmp_path):
    doc = from_data(Doc, _doc())
    text = dump_yaml(doc, set_only=True)
    assert "max_prob" not in text and "null" not in text  # e0's policy, e1's threshold: defaults
    path = tmp_path / "d.yaml"
    path.write_text(text)
    assert load_file(Doc, path) == doc
    assert "max_prob" in dump_yaml(doc) and "null" in dump_yaml(doc)


def test_unsupported_field_types_are_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        value: list

    with pytest.raises(TypeError, match="unsupported field type"):
        from_data(Bad, {"value": [1]})
