"""The cached time texts (logs, the Received: and Date: fields) and the W3C fast path write exactly what the plain formatting did:
`datetime.fromtimestamp` with its rounding (which can carry into the next second, or day), and
`field_value` for any value a hostile client can put in a field."""

from __future__ import annotations

import email.utils
import math
from datetime import datetime, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from mailgate.observe import jsonlog, stamps, w3c
from mailgate.observe.writer import utc_day

# From 1970 to 2100, with the fractions that round across a second (and a midnight).
TIMES = st.floats(min_value=0.0, max_value=4_102_444_800.0, allow_nan=False, allow_infinity=False)
MIDNIGHT = 1_800_057_600.0  # 2027-01-16 00:00:00 UTC


def _plain(when: float) -> datetime:
    return datetime.fromtimestamp(when, timezone.utc)


@given(TIMES)
@example(MIDNIGHT - 0.0000004)  # rounds up to the next day
@example(MIDNIGHT - 0.0000005)  # half a microsecond: to even
@example(MIDNIGHT - 0.0000006)
@example(math.nextafter(MIDNIGHT, 0.0))
@example(1_800_000_000.9995)
@example(0.0)
def test_texts_are_what_datetime_formats(when):
    moment = _plain(when)
    assert jsonlog.timestamp(when) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    texts = stamps.texts(when)
    assert (texts.w3c_date, texts.w3c_time) == (moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S"))
    assert utc_day(when) == moment.date()
    assert stamps.rfc5322_local(when) == email.utils.formatdate(when, localtime=True)


def test_a_carry_into_the_next_day_names_the_next_day():
    when = MIDNIGHT - 0.0000004
    assert utc_day(when).isoformat() == "2027-01-16"
    assert stamps.texts(when).w3c_time == "00:00:00"


def test_the_cache_stays_small():
    for second in range(3 * stamps.CACHED_SECONDS):
        stamps.texts(float(second))
    assert len(stamps._cache) <= stamps.CACHED_SECONDS


FIELD_VALUES = st.one_of(
    st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False),
    st.text(), st.text(alphabet=st.sampled_from("ab %+-\x00\r\n\x7f\u00a0\u2028é")),
    st.text(min_size=w3c.MAX_FIELD - 2, max_size=w3c.MAX_FIELD + 2, alphabet="ab"),
)


@given(FIELD_VALUES)
@example("MAIL +FROM:<a b@example.com>")  # a space: IIS writes +
@example("50%")
@example("evil\r\n#Fields: forged")
@example("nbsp\u00a0x")
@example("")
@example(0)
@example(-7)
@example(True)
@example("x" * (w3c.MAX_FIELD + 1))
def test_the_fast_field_path_writes_what_field_value_writes(value):
    assert w3c._record_field(value) == w3c.field_value(value)


@given(TIMES, st.dictionaries(st.sampled_from(w3c.FIELDS[2:]), FIELD_VALUES))
def test_a_line_has_every_field_as_field_value_makes_it(when, record):
    record = {**record, "when": when}
    values = w3c.line(record).removesuffix("\r\n").split(" ")
    moment = _plain(when)
    expected = [moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S")]
    for name in w3c.FIELDS[2:]:
        if name == "sc-win32-status":
            expected.append("0")
        elif name == "cs-version":
            expected.append(w3c.PROTOCOL_VERSION)
        elif name == "cs-uri-query":
            expected.append(str(record.get(name) or w3c.EMPTY))
        else:
            expected.append(w3c.field_value(record.get(name)))
    assert values == " ".join(expected).split(" ")
