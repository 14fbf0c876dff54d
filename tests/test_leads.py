from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.leads import SKIP_CODES, RecordError, parse_instant, parse_records, to_micros
from notifier.state import PollRecord
from notifier.state.sqlite import SQLiteState

SAME_INSTANT = [
    "2023-11-23T18:36:21.512302-08:00",
    "2023-11-24T02:36:21.512302Z",
    "2023-11-24T02:36:21.5123020Z",
    "2023-11-23T19:36:21.512302-07:00",
    "2023-11-24T02:36:21.512302000Z",
    "2023-11-24T02:36:21.512302+00:00",
    "2023-11-24 02:36:21.512302z",
    "2023-11-24T08:06:21.512302+05:30",
]


@pytest.mark.parametrize("text", SAME_INSTANT)
def test_one_instant_written_many_ways_is_one_value(text: str) -> None:
    instant, had_offset = parse_instant(text)
    assert had_offset
    assert instant == datetime(2023, 11, 24, 2, 36, 21, 512302, tzinfo=UTC)


@pytest.mark.parametrize(("text", "micro"), [
    ("2025-01-01T00:00:00Z", 0), ("2025-01-01T00:00:00.5Z", 500000),
    ("2025-01-01T00:00:00.123456789Z", 123456), ("2025-01-01T00:00:00.000001-08:00", 1),
])
def test_any_number_of_fractional_digits(text: str, micro: int) -> None:
    assert parse_instant(text)[0].microsecond == micro


def test_naive_time_is_read_as_utc_and_reported() -> None:
    instant, had_offset = parse_instant("2025-01-01T10:00:00")
    assert instant == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert not had_offset


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01T00:00:00Z", "2025-01-01", "2025-01-01T25:00:00Z",
                                  "2025-01-01T00:00:00+25:00"])
def test_bad_times_are_record_errors(text: str) -> None:
    with pytest.raises(RecordError):
        parse_instant(text)


def record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"Type": "Lead", "Name": "n", "Email": "e@x.org", "PhoneNumber": "",
                               "CreateTime": "2023-11-23T18:36:21.512302-08:00", "Content": "c",
                               "SessionID": 31305, "URI": "u", "Count": 2}
    base.update(overrides)
    return base


def test_tolerates_string_numbers_duplicates_and_bad_records() -> None:
    data = [
        record(SessionID="31305"),
        record(CreateTime="2023-11-24T02:36:21.512302Z"),  # the same lead, another spelling
        record(SessionID=None),
        record(CreateTime="garbage", SessionID=2),
        record(Type="Booking", SessionID=3),
        "not an object",
        record(Type="appointment", SessionID=4, Name=None, Count="7"),
    ]
    parsed = parse_records("s", data)
    assert [lead.key.session_id for lead in parsed.leads] == [31305, 4]
    assert parsed.leads[1].type == "Appointment"
    assert parsed.leads[1].name == ""
    assert parsed.leads[0].raw["SessionID"] == "31305"  # the record exactly as the API gave it
    assert [s.index for s in parsed.skipped] == [2, 3, 4, 5]
    assert "SessionID is missing" in parsed.skipped[0].reason


def test_data_null_is_empty() -> None:
    assert parse_records("s", None).leads == []


def test_key_is_the_instant() -> None:
    a = parse_records("s", [record()]).leads[0]
    b = parse_records("s", [record(CreateTime="2023-11-24T02:36:21.5123020Z")]).leads[0]
    assert a.key == b.key
    assert a.key.webhook_id() == b.key.webhook_id()
    assert a.key.created_us == to_micros(datetime(2023, 11, 24, 2, 36, 21, 512302, tzinfo=UTC))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
record_like = st.fixed_dictionaries({}, optional={
    "Type": st.sampled_from(["Lead", "Appointment", "lead", "", "x"]) | json_values,
    "SessionID": st.integers() | st.text(max_size=25) | json_values,
    "CreateTime": st.sampled_from(SAME_INSTANT) | st.text(max_size=40) | json_values,
    "Name": json_values, "Email": json_values,
})


@given(st.lists(record_like | json_values, max_size=8) | st.dictionaries(st.text(max_size=5), record_like)
       | json_values)
def test_any_data_gives_leads_or_a_record_error(data: object) -> None:
    try:
        parsed = parse_records("s", data)
    except RecordError as exc:
        assert exc.code == "data"
        return
    if isinstance(data, list):
        assert len(parsed.leads) + len(parsed.skipped) <= len(data)
    for lead in parsed.leads:
        assert lead.type in ("Lead", "Appointment")
        assert isinstance(lead.name, str)
    assert {skip.code for skip in parsed.skipped} <= set(SKIP_CODES)


GOOD = record(SessionID=1, Name="Ada Lovelace", Email="ada@example.org", PhoneNumber="+1 555 010 0100")


@pytest.mark.parametrize(("bad", "code"), [
    ({"SessionID": 2**70}, "session_id"),
    ({"SessionID": 2**63}, "session_id"),
    ({"SessionID": -(2**63) - 1}, "session_id"),
    ({"SessionID": 1e20}, "session_id"),
    ({"SessionID": "9999999999999999999"}, "session_id"),
    ({"SessionID": "\u0661\u0662"}, "session_id"),  # Arabic-Indic digits are no SessionID
    ({"SessionID": [1]}, "session_id"),
    ({"CreateTime": "0001-01-01T00:00:00+01:00"}, "create_time"),
    ({"CreateTime": "9999-12-31T23:59:59-01:00"}, "create_time"),
    ({"CreateTime": "9999-12-31T23:59:59Z"}, "create_time"),  # cannot be shown east of UTC
    ({"CreateTime": 1700000000}, "create_time"),
    ({"Type": {"x": 1}}, "type"),
    ({"Type": None}, "missing_field"),
    ({"Count": 10**5000}, "unstorable"),
    ({"Extra": json.loads("[" * 100 + "]" * 100)}, "unstorable"),
])
def test_a_record_that_cannot_reach_the_state_is_skipped_alone(bad: dict[str, Any], code: str) -> None:
    """Issue 12 (2): such a record raised past the parser (or later, in the state) and every poll
    of the chatbot failed. Now it is skipped with a stable code and the rest of the answer is used."""
    hostile = record(SessionID=2, Name="Eve Secret", Email="eve@secret.example", PhoneNumber="+1 555 999 8888")
    hostile.update(bad)
    parsed = parse_records("s", [hostile, GOOD])
    assert [lead.key.session_id for lead in parsed.leads] == [1]
    (skip,) = parsed.skipped
    assert (skip.index, skip.code) == (0, code)
    for contact in ("Eve", "secret", "555"):
        assert contact not in skip.reason


def test_identity_at_the_edges_of_the_state_columns_is_kept() -> None:
    data = [record(SessionID=2**63 - 1), record(SessionID=-(2**63)), record(SessionID="-9223372036854775808"),
            record(SessionID=3, CreateTime="9999-12-30T12:00:00Z"),
            record(SessionID=4, CreateTime="0001-01-02T00:00:00Z")]
    parsed = parse_records("s", data)
    assert [lead.key.session_id for lead in parsed.leads] == [2**63 - 1, -(2**63), 3, 4]  # two spellings, one lead
    assert parsed.skipped == []


async def test_lone_surrogates_become_replacement_characters_and_the_record_survives(tmp_path: Path) -> None:
    """A `\\ud800` escape cannot be written as UTF-8: the state (and every sink) failed on it."""
    hostile = record(SessionID=5, Name="Ann\ud800", Content="x\udfff\ud83d\ude00y", Extra={"k\udc00": ["\ud800"]})
    parsed = parse_records("s", [hostile])
    (lead,) = parsed.leads
    assert lead.name == "Ann\ufffd"
    assert lead.raw["Content"] == "x\ufffd\ufffd\ufffdy"
    assert lead.raw["Extra"] == {"k\ufffd": ["\ufffd"]}
    assert hostile["Name"] == "Ann\ud800"  # the caller's record is not changed
    state = SQLiteState(tmp_path / "state.db")
    try:
        await state.record_poll(PollRecord(serial="s", chatbot="bot", covered_from_us=0, detected_at=datetime.now(UTC),
                                           notify=[(lead, ("crm",))], silent=[]))
        ((due,),) = await state.claim(datetime.now(UTC).timestamp() + 1, {"crm": 10}, lease=60)
        assert due.lead.raw == lead.raw
    finally:
        await state.close()


def test_clean_records_are_not_copied() -> None:
    clean = record(Extra={"a": [1, 2.5, None, True, "é"]})
    assert parse_records("s", [clean]).leads[0].raw is clean


def test_every_skip_has_a_code_from_the_fixed_set() -> None:
    data = ["x", 5, None, record(SessionID=None), record(SessionID=True), record(CreateTime="soon"),
            record(Type="Booking"), record(Deep=json.loads("[" * 70 + "]" * 70))]
    parsed = parse_records("s", data)
    assert parsed.leads == []
    assert [s.code for s in parsed.skipped] == ["not_object"] * 3 + ["missing_field", "session_id", "create_time",
                                                                     "type", "unstorable"]
    assert set(SKIP_CODES) == {"not_object", "missing_field", "session_id", "create_time", "type", "unstorable"}
    assert "'Deep'" in parsed.skipped[-1].reason  # names the field


@pytest.mark.parametrize(("data", "sessions"), [
    ({"0": record(SessionID=1), "1": record(SessionID=2)}, [1, 2]),  # a map of records
    ({"0": record(SessionID=1), "1": {"junk": 1}}, [1]),
    (record(SessionID=7), [7]),  # one record, not in a list
    ({"items": [record(SessionID=1), record(SessionID=2)], "total": 2}, [1, 2]),  # a wrapper of one list
    ({}, []),
])
def test_data_as_an_object_is_read_where_unambiguous(data: object, sessions: list[int]) -> None:
    """Issue 12 (2): `Data` given as an object lost the whole answer."""
    assert [lead.key.session_id for lead in parse_records("s", data).leads] == sessions


@pytest.mark.parametrize("data", [{"a": [1], "b": [2]}, {"a": {"x": 1}}, {"a": 1}, "leads", 3])
def test_data_of_no_clear_shape_is_a_record_error(data: object) -> None:
    with pytest.raises(RecordError, match="Data is") as info:
        parse_records("s", data)
    assert info.value.code == "data"
