from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.leads import RecordError, parse_instant, parse_records, to_micros

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


@given(st.lists(record_like | json_values, max_size=8) | json_values)
def test_any_data_gives_leads_or_a_record_error(data: object) -> None:
    try:
        parsed = parse_records("s", data)
    except RecordError:
        return
    assert len(parsed.leads) + len(parsed.skipped) <= (len(data) if isinstance(data, list) else 0)
    for lead in parsed.leads:
        assert lead.type in ("Lead", "Appointment")
        assert isinstance(lead.name, str)
