"""The clean action's rules: per-patient date shifts, descriptor cleaning."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from site_client.deid_rules import DateShift, clean_descriptor

SHIFT = DateShift(days=400, seconds=3 * 3600 + 25)


def test_date_alone_moves_by_whole_days() -> None:
    assert SHIFT.date("20240315") == (datetime(2024, 3, 15) - timedelta(days=400)).strftime(
        "%Y%m%d"
    )


def test_date_and_time_move_together_across_midnight() -> None:
    # 22:30 + 3 h 25 s crosses midnight: the date moves one day less far back.
    date, time = SHIFT.date_and_time("20240315", "223000.25")
    moved = datetime(2024, 3, 15, 22, 30) - timedelta(days=400) + timedelta(seconds=3 * 3600 + 25)
    assert (date, time) == (moved.strftime("%Y%m%d"), moved.strftime("%H%M%S") + ".25")


def test_intervals_between_a_patient_s_dates_are_kept() -> None:
    first, second = SHIFT.date("20240101"), SHIFT.date("20240315")
    gap = datetime.strptime(second, "%Y%m%d") - datetime.strptime(first, "%Y%m%d")
    assert gap == datetime(2024, 3, 15) - datetime(2024, 1, 1)


@pytest.mark.parametrize(
    ("value", "moment", "suffix"),
    [
        ("20240315223000", datetime(2024, 3, 15, 22, 30), ""),
        ("20240315223000.5+0100", datetime(2024, 3, 15, 22, 30), ".5+0100"),
        ("2024", datetime(2024, 1, 1), ""),
    ],
)
def test_datetime_moves_by_the_whole_offset(value: str, moment: datetime, suffix: str) -> None:
    moved = moment - timedelta(days=400) + timedelta(seconds=3 * 3600 + 25)
    assert SHIFT.datetime(value) == moved.strftime("%Y%m%d%H%M%S") + suffix


@pytest.mark.parametrize("bad", ["2024-03-15", "20241345", "", "yesterday"])
def test_invalid_dates_give_none(bad: str) -> None:
    assert SHIFT.date(bad) is None
    assert SHIFT.datetime(bad) is None


def test_time_alone_moves_by_the_seconds_modulo_a_day() -> None:
    assert SHIFT.time("2230") == "013025"
    assert SHIFT.time("25") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT chest w/o contrast for DOE^JOHN", "CT CHEST W/O CONTRAST"),
        ("T1 AX post 3mm MRN4711", "T1 AX POST 3MM"),
        ("seen by Gregory House 20240315 ACC99887766", ""),
        ("Thorax PA + LAT", "THORAX PA LAT"),
    ],
)
def test_descriptors_keep_safe_words_only(text: str, expected: str) -> None:
    assert clean_descriptor(text) == expected


def test_descriptor_is_cut_to_the_limit() -> None:
    assert clean_descriptor("CHEST " * 10, max_length=16) == "CHEST CHEST CHES"
