"""The streaming MIME walk on real-shaped samples (tests/data/mime) and malformed input."""

from __future__ import annotations

import base64
import email.message
import io
from pathlib import Path

import pytest

from mailgate.screen import bounds, leaf, mime
from mailgate.screen.mime import LeafPart, Needs, WalkResult, root_headers, walk

DATA = Path(__file__).parent.parent / "data" / "mime"
ALL = Needs(decode=True, size=True, text=True, zips=True)


def _walk(data: bytes, needs: Needs = ALL) -> tuple[list[LeafPart], WalkResult]:
    parts: list[LeafPart] = []
    result = walk(io.BytesIO(data), needs, parts.append)
    return parts, result


def _sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_outlook_nested_alternative_and_attachments() -> None:
    parts, result = _walk(_sample("outlook_mixed.eml"))
    assert [(p.path, p.content_type) for p in parts] == [
        ("1.1", "text/plain"), ("1.2", "text/html"), ("2", "application/pdf"),
        ("3", "application/octet-stream")]
    assert parts[0].text is not None and "Bericht für Q2" in parts[0].text  # qp + iso-8859-1
    assert parts[2].names == ["Q2 report.pdf"] and parts[2].sniffed and parts[2].sniffed.kind == "pdf"
    assert parts[3].names == ["invoice.pdf.exe"] and parts[3].sniffed and parts[3].sniffed.kind == "pe"
    assert result.root_headers["subject"] == "Q2 report and invoice"
    assert result.line_ending == b"\r\n"


def test_part_ranges_cover_exactly_each_part() -> None:
    data = _sample("outlook_mixed.eml")
    parts, result = _walk(data)
    attachment = data[parts[3].start:parts[3].end]
    assert attachment.startswith(b"Content-Type: application/octet-stream;")
    assert attachment.endswith(b"AAAA\r\n")  # the sample's blank line, less the delimiter's CRLF
    assert data[parts[3].end:].startswith(b"\r\n------=_NextPart_000_000D_01D9A603.FED5E060--")
    container = result.entities["1"]
    assert data[container.start:container.end].startswith(b"Content-Type: multipart/alternative")
    assert data[container.end:].startswith(b"\r\n------=_NextPart_000_000D")


def test_apple_inline_parts_inside_alternative() -> None:
    parts, _ = _walk(_sample("apple_inline.eml"))
    named = {p.path: p.names for p in parts if p.names}
    assert named == {"2.2": ["IMG_0042.png"], "2.4": ["Setup.EXE"]}


def test_forwarded_messages_nested_in_messages() -> None:
    parts, result = _walk(_sample("forwarded_nested.eml"))
    paths = {p.path: p for p in parts}
    assert paths["2.1.2"].names == ["tool.exe"] and paths["2.1.2"].in_multipart
    deep = paths["2.1.3.1"]  # the whole body of a message inside a message inside the message
    assert deep.names == ["update.exe"] and not deep.in_multipart and deep.sniffed.kind == "pe"
    assert result.entities["2.1.3"].in_multipart
    assert paths["3"].text == "Trailing note after the forward."


def test_rfc2231_and_rfc2047_names_are_decoded() -> None:
    parts, result = _walk(_sample("rfc2231_names.eml"))
    assert parts[0].text == "Счет во вложении"  # base64 + koi8-r
    assert parts[1].names == ["Счет.EXE"]
    assert parts[2].names == ["акт № 1.pdf.scr"]  # continuations name*0*, name*1*, name*2
    assert leaf.decoded(result.root_headers["subject"]) == "Счет на оплату"


def test_zip_listing_only_when_asked() -> None:
    data = _sample("zip_with_exe.eml")
    parts, _ = _walk(data)
    assert parts[1].zip is not None and "docs/payload.exe" in parts[1].zip.names
    parts, _ = _walk(data, Needs(decode=True))
    assert parts[1].zip is None and parts[1].text is None and parts[1].sniffed.kind == "zip"


def test_nothing_decoded_when_no_rule_needs_content() -> None:
    parts, _ = _walk(_sample("outlook_mixed.eml"), Needs())
    assert all(p.size == 0 and p.sniffed is None and p.text is None for p in parts)
    assert parts[3].names == ["invoice.pdf.exe"]


def test_bare_lf_message_and_transport_padding() -> None:
    data = (b"Subject: lf\nContent-Type: multipart/mixed; boundary=zz\n\n--zz  \n"
            b"Content-Type: text/plain\n\nfirst\n--zz\t\nContent-Type: application/octet-stream; name=a.bin\n\n"
            b"MZ-payload\n--zz--\n")
    parts, result = _walk(data)
    assert [p.text for p in parts[:1]] == ["first"]
    assert parts[1].names == ["a.bin"] and parts[1].sniffed.kind == "pe"
    assert data[parts[1].end:].startswith(b"\n--zz--")
    assert result.line_ending == b"\n"


def test_missing_close_delimiter_and_unterminated_parts() -> None:
    data = b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nno end"
    parts, result = _walk(data)
    assert len(parts) == 1 and parts[0].text == "no end" and parts[0].end == len(data)


def test_over_long_lines_are_read_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_LINE", 32)
    # The second 32-byte piece of this line looks exactly like a delimiter, but starts no line.
    line = b"x" * 32 + b"--not-a-boundary-" + b" " * 15 + b"tail"
    data = (b"Content-Type: multipart/mixed; boundary=not-a-boundary-\r\n\r\n--not-a-boundary-\r\n"
            b"Content-Type: text/plain\r\n\r\n" + line + b"\r\n--not-a-boundary---\r\n")
    parts, _ = _walk(data)
    assert len(parts) == 1 and parts[0].text == line.decode()


def test_nesting_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_NESTING", 2)
    data = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n"
    data += b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    data += b"Content-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: text/plain\r\n\r\nx\r\n--c--\r\n"
    data += b"--b--\r\n--a--\r\n"
    parts, result = _walk(data)
    assert [(u.path, u.reason) for u in result.unseen] == [("1.1", "MIME nesting deeper than 2")]
    assert parts[-1].content_type == "multipart/mixed"  # opened no further: an opaque leaf


def test_entity_limit_is_reported_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_ENTITIES", 3)
    data = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
    data += b"".join(b"--a\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(5)) + b"--a--\r\n"
    parts, result = _walk(data)
    assert len(parts) == 2
    assert [(u.path, u.reason) for u in result.unseen] == [("", "more than 3 MIME entities")]


def test_text_past_the_limit_is_reported_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaf, "MAX_TEXT_CHARS", 10)
    _, result = _walk(b"Subject: t\r\n\r\n" + b"abcdefghij" * 50 + b"\r\n")
    assert [(u.path, u.what) for u in result.unseen] == [("", frozenset({bounds.TEXT}))]


def test_parameter_parsing_cost_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folded `name="` and a long run of `;` cost about a minute of CPU for 247 KB in the
    `email` package's parameter parser (quadratic in the semicolons): such a field never reaches
    the parser, and its part is reported unseen."""
    parse = email.message._parseparam
    seen: list[int] = []

    def bounded_parse(text: str) -> list[str]:
        seen.append(text.count(";"))
        assert text.count(";") <= mime.MAX_PARAMS + 1 and len(text) <= mime.MAX_PARAM_FIELD + 1
        return parse(text)

    monkeypatch.setattr(email.message, "_parseparam", bounded_parse)
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b'Content-Type: application/octet-stream;\r\n name="' + b";" * 240_000 + b'"\r\n\r\nxx\r\n--b--\r\n')
    parts, result = _walk(data)
    assert [(u.path, u.reason) for u in result.unseen] == [("1", "content-type parameters too long")]
    assert parts[0].names == [] and seen  # the parser ran, on bounded fields only


def test_the_walk_stops_at_its_deadline() -> None:
    deadline = bounds.Deadline(0)
    with pytest.raises(bounds.ScreenTimeout):
        walk(io.BytesIO(b"Subject: t\r\n\r\nbody\r\n"), Needs(text=True), lambda part: None, deadline)


def test_text_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaf, "MAX_TEXT_CHARS", 10)
    parts, _ = _walk(b"Subject: t\r\n\r\n" + b"abcdefghij" * 50 + b"\r\n")
    assert parts[0].text == "abcdefghij" and parts[0].size == 502  # the final CRLF is content


def test_root_headers_reads_only_the_header_section() -> None:
    data = io.BytesIO(_sample("keywords.eml") + b"x" * (4 * mime.READ_CHUNK))
    headers, unseen = root_headers(data)
    assert unseen == []
    assert leaf.decoded(headers["subject"]) == "Sie haben gewonnen: Glückwunsch!"
    assert data.tell() <= mime.READ_CHUNK


def test_rfc2047_words_in_quoted_parameters_as_outlook_writes_them() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
            b'Content-Type: application/octet-stream; name="=?UTF-8?B?w6lsw6kuZXhl?="\r\n'
            b'Content-Disposition: attachment; filename="=?UTF-8?B?w6lsw6kuZXhl?="\r\n\r\nx\r\n--o--\r\n')
    parts, _ = _walk(data)
    assert parts[0].names == ["élé.exe"]


def test_decoding_stops_once_the_head_is_sniffed_unless_size_is_needed() -> None:
    payload = b"MZ" + b"\0" * (4 * leaf.sniffing.HEAD_BYTES)

    data = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(payload).replace(b"\n", b"\r\n"))
    sniff_only, _ = _walk(data, Needs(decode=True))
    assert sniff_only[0].sniffed.kind == "pe" and sniff_only[0].size < len(payload)
    exact, _ = _walk(data, Needs(decode=True, size=True))
    assert exact[0].size == len(payload)
