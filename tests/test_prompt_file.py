"""The prompt file checked whole before any work (tasks.prompts.read_prompt_file), and the row checks of
csr_core.prompts.parse_pool: duplicates, wrong types, strings that are not UTF-8, overlong instructions."""
import json

import pytest
from prefect.states import Failed

from csr_core.prompts import MAX_INSTRUCTION_CHARS, PoolExhausted, parse_pool
from csr_core.validation import ConfigError
from tasks.prompts import read_prompt_file, retry_unless_bad_input


def row(pid, image="x.jpg", text="<image>\nDescribe the image."):
    return {"id": pid, "image": image, "input": text}


def test_a_later_duplicate_is_invalid_under_its_own_name():
    valid, invalid = parse_pool([row("a"), row("b"), row("a", "y.jpg"), row("c"), row("a", "z.jpg")])
    assert [(p.prompt_id, p.image) for p in valid] == [("a", "x.jpg"), ("b", "x.jpg"), ("c", "x.jpg")]
    assert invalid == {"a#row2": "duplicate id (first at row 0)", "a#row4": "duplicate id (first at row 0)"}


def test_the_first_row_owns_its_id_even_when_it_is_malformed():
    valid, invalid = parse_pool([{"id": "a", "image": "x.jpg"}, row("a")])
    assert valid == [] and invalid == {"a": "missing field 'input'", "a#row1": "duplicate id (first at row 0)"}


def test_generated_names_never_take_a_real_id():
    rows = [row("a"), row("a"), row("a#row1"), "junk", row("row-3")]
    valid, invalid = parse_pool(rows)
    assert [p.prompt_id for p in valid] == ["a", "a#row1", "row-3"]
    assert invalid == {"a#row1#row1": "duplicate id (first at row 0)", "row-3#row3": "not an object: 'junk'"}


def test_a_wrong_field_type_gets_its_own_reason():
    rows = [{"id": "s", "image": "s.jpg", "input": 42}, {"id": "t", "image": None, "input": "Describe."},
            {"id": [1], "image": "u.jpg", "input": "Describe."}, {"id": True, "image": "v.jpg", "input": "Describe."},
            {"id": 7, "image": "w.jpg", "input": "<image>\nDescribe."}]
    valid, invalid = parse_pool(rows)
    assert [(p.prompt_id, p.instruction) for p in valid] == [("7", "Describe.")]
    assert invalid == {"s": "input must be a string, got int", "t": "image must be a string, got NoneType",
                       "row-2": "id must be a string or an integer, got list",
                       "row-3": "id must be a string or an integer, got bool"}


def test_strings_that_cannot_be_utf8_invalidate_only_their_row():
    rows = json.loads('[{"id": "\\ud800", "image": "a.jpg", "input": "Describe."},'
                      ' {"id": "b", "image": "\\udcff.jpg", "input": "Describe."},'
                      ' {"id": "c", "image": "c.jpg", "input": "What is \\ud83d?"},'
                      ' {"id": "d", "image": "d.jpg", "input": "Describe \\ud83d\\ude00."}]')
    valid, invalid = parse_pool(rows)
    assert [(p.prompt_id, p.instruction) for p in valid] == [("d", "Describe \N{GRINNING FACE}.")]
    assert invalid == {"row-0": "id not encodable as UTF-8", "b": "image not encodable as UTF-8",
                       "c": "input not encodable as UTF-8"}
    for name, reason in invalid.items():
        (name + reason).encode("utf-8")  # what goes into the prompts table is valid text


def test_an_overlong_instruction_is_invalid():
    limit = MAX_INSTRUCTION_CHARS
    rows = [row("ok", text="<image>\n" + "x" * limit), row("long", text="x" * (limit + 1))]
    valid, invalid = parse_pool(rows)
    assert [p.prompt_id for p in valid] == ["ok"] and len(valid[0].instruction) == limit == 8000
    assert invalid == {"long": "instruction of 8001 characters; longer than 8000"}


def _error(path) -> str:
    with pytest.raises(ConfigError) as caught:
        read_prompt_file(path)
    assert caught.value.field == "prompts.source" and str(path) in str(caught.value)
    return str(caught.value)


def test_the_prompt_file_is_checked_whole_up_front(tmp_path):
    path = tmp_path / "pool.json"
    assert _error(path) == f"prompts.source: {path}: prompt file not found"
    path.write_bytes(b'[{"id": "caf\xe9", "image": "a.jpg", "input": "Describe."}]')  # Latin-1
    assert _error(path) == f"prompts.source: {path}: not UTF-8 (byte 12: invalid continuation byte)"
    path.write_text('[\n  {"id": "a",\n  }\n]')
    assert _error(path) == (f"prompts.source: {path}: not JSON: Expecting property name enclosed in double quotes "
                            "at line 3, column 3")
    path.write_text(json.dumps(row("a")))
    assert _error(path) == f"prompts.source: {path}: must hold a JSON list of prompt rows, got a JSON object"
    path.write_text(json.dumps([row("a", text="<image>"), "junk"]))
    assert _error(path) == f"prompts.source: {path}: no valid prompt row among 2; e.g. a: empty instruction"
    path.write_text("[]")
    assert _error(path) == f"prompts.source: {path}: no valid prompt row among 0"


def test_a_usable_file_returns_its_rows_malformed_ones_included(tmp_path):
    path = tmp_path / "pool.json"
    rows = [row("a"), {"id": "b"}]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())  # a UTF-8 byte order mark is fine
    assert read_prompt_file(path) == rows


def test_bad_input_is_not_retried_but_other_failures_are():
    # Prefect's task engine hands retry_condition_fn a Failed state holding the exception
    assert not retry_unless_bad_input(None, None, Failed(data=ConfigError("prompts.source", "not JSON")))
    assert not retry_unless_bad_input(None, None, Failed(data=PoolExhausted("prompts: round 4 ...")))
    assert retry_unless_bad_input(None, None, Failed(data=OSError("disk full")))
