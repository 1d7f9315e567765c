"""The bad-input corpus: what users send that cannot be searched, defined once.

Every front end runs it (the core in tests/test_bad_inputs.py, the Discord and Slack bots end to
end, the web API): each case must get a reply that says what is wrong (its `expect` fragments,
formatted with the limits in force), and the bot must keep serving afterwards. Three cases are
searchable and must give ordinary results: an animated GIF (its first frame is searched, as
`core.media.image.decode_image` documents), a silent clip (searched as a sound: no speech) and a
16-bit greyscale PNG (searched as the same grey in 8 bits).

Everything is made in code and small. Two cases stand for large files without being large:
the 30 MB file declares its size (the chat platforms send it with the attachment, so the bots
refuse it before downloading; the web API gets a stream of zeros; the core gets the bytes, made
once per run), and the two-hour voice message is a 1 s Ogg/Opus clip whose last page says it
ends after 2 h (FFmpeg reads the duration from there, and so does the decoder's limit check).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from core.config import Settings
from core.media.sizes import human_bytes
from tests import media_factory as mf

Kind = Literal["image", "audio", "text", "count"]
BLUE, RED = (0, 0, 255), (255, 0, 0)
TOO_MANY_FILES = 11
HUGE_FILE_BYTES = 30_000_000
TWO_HOURS = 7200.0


@dataclass(frozen=True)
class BadInput:
    """One thing a user may send.

    kind: "image" / "audio": one attachment (the slot it is sent in where a front end has
    slots); "text": the query text; "count": `TOO_MANY_FILES` copies of the attachment.
    expect: fragments the reply must contain (all of them, case-insensitive), `{name}` fields
    filled by `expected(settings)`; empty: the input is searchable and gets results.
    same_as: for a searchable input, an input that must give the same results (as a PNG).
    declared_size: the size the platform announces, when it is not `len(data)`.
    """

    name: str
    kind: Kind
    data: bytes = b""
    text: str = ""
    mimetype: str = ""
    filename: str = ""
    expect: tuple[str, ...] = ()
    same_as: bytes | None = None
    declared_size: int | None = None

    @property
    def searchable(self) -> bool:
        return not self.expect

    @property
    def size(self) -> int:
        return len(self.data) if self.declared_size is None else self.declared_size

    def full_data(self) -> bytes:
        """The bytes as a front end that does not look at sizes would receive them."""
        return huge_file(self.declared_size) if self.declared_size is not None else self.data

    def expected(self, settings: Settings) -> tuple[str, ...]:
        limits = settings.limits
        values = {
            "max_file": human_bytes(limits.max_file_bytes),
            "max_pixels": megapixels(limits.max_image_pixels),
            "min_audio": f"{limits.min_audio_seconds:g} s",
            "max_audio": f"{limits.max_audio_seconds:g} s",
            "max_chars": str(limits.max_query_chars),
            "max_attachments": str(settings.bot.max_attachments),
        }
        return tuple(fragment.format(**values) for fragment in self.expect)


def megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.3g} MP"


def says(reply: str, fragments: tuple[str, ...]) -> bool:
    """Whether `reply` contains every fragment (case-insensitive)."""
    return all(fragment.lower() in reply.lower() for fragment in fragments)


@functools.cache
def huge_file(size: int) -> bytes:
    """`size` zero bytes, made once per run whoever asks."""
    return bytes(size)


class ZeroStream(io.RawIOBase):
    """`size` zero bytes read in chunks, never held whole (an upload of a huge file)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


# --------------------------------------------------------------------------- makers


def corrupt_jpeg() -> bytes:
    """A JPEG whose frame header (SOF0: size, components) is overwritten with 0xFF bytes."""
    data = bytearray(mf.make_jpeg(120, 90, seed=1))
    sof = data.find(b"\xff\xc0")
    data[sof + 2 : sof + 12] = b"\xff" * 10
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG with 40 random bytes inside its compressed pixel data (IDAT)."""
    data = bytearray(mf.make_png(120, 90, seed=1))
    idat = data.find(b"IDAT")
    data[idat + 20 : idat + 60] = mf.random_bytes(40, seed=4)
    return bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def black_and_white_png(width: int, height: int) -> bytes:
    """A real 1-bit greyscale PNG of `width` x `height` black pixels, compressed row by row
    (20k x 20k is about 50 KB): never held as pixels."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, initial 0)."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def voice_message_claiming(seconds: float) -> bytes:
    """A 1 s Ogg/Opus voice message whose last page's granule position says it lasts `seconds`
    (Opus counts 48 kHz samples from the stream's pre-skip); the page checksum is redone."""
    data = bytearray(mf.make_audio("ogg", 1.0))
    page = data.rfind(b"OggS")
    segments = data[page + 26]
    end = page + 27 + segments + sum(data[page + 27 : page + 27 + segments])
    assert end == len(data), "the last Ogg page should end the file"
    head = data.find(b"OpusHead")
    pre_skip = struct.unpack("<H", data[head + 10 : head + 12])[0]
    data[page + 6 : page + 14] = struct.pack("<q", int(seconds * 48_000) + pre_skip)
    data[page + 22 : page + 26] = bytes(4)
    data[page + 22 : page + 26] = struct.pack("<I", ogg_crc(bytes(data[page:end])))
    return bytes(data)


def _crc8(data: bytes) -> int:
    """FLAC's frame-header checksum (CRC-8, polynomial 0x07, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    """FLAC's frame checksum (CRC-16, polynomial 0x8005, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(number: int) -> bytes:
    """A FLAC frame number, coded like UTF-8 (up to 0xFFFF here)."""
    if number < 0x80:
        return bytes([number])
    if number < 0x800:
        return bytes([0xC0 | number >> 6, 0x80 | number & 0x3F])
    return bytes([0xE0 | number >> 12, 0x80 | (number >> 6) & 0x3F, 0x80 | number & 0x3F])


def flac_frames_at(
    rate: int | tuple[int, ...], frames: int = 64, block: int = 4096, header_rate: int = 48_000
) -> bytes:
    """A mono 16-bit FLAC whose STREAMINFO says `header_rate` but whose frames each say `rate`
    (a 16-bit rate in Hz in the frame header; a tuple: frame i says `rate[i]`): `frames` frames
    of `block` samples of one value (CONSTANT subframes, 16 bytes a frame). At 1 Hz each frame
    is `block` seconds, which a resampler to 16 kHz turns into 16,000 x `block` samples."""
    rates = rate if isinstance(rate, tuple) else (rate,) * frames
    frames = len(rates)
    total = frames * block
    fields = (header_rate << 44) | (15 << 36) | total  # 20 bits rate, 3 channels-1, 5 bps-1, 36 total
    streaminfo = struct.pack(">HH", block, block) + bytes(6) + fields.to_bytes(8, "big") + bytes(16)
    out = [b"fLaC", b"\x80" + len(streaminfo).to_bytes(3, "big"), streaminfo]
    for number, frame_rate in enumerate(rates):
        # Sync, fixed block size; block size "16 bits follow" (7), rate "16-bit Hz follows" (13);
        # mono (0), 16 bits a sample (4).
        head = b"\xff\xf8\x7d\x08" + _utf8_number(number) + struct.pack(">HH", block - 1, frame_rate)
        head += bytes([_crc8(head)])
        frame = head + b"\x00" + struct.pack(">h", 1000)  # a CONSTANT subframe
        out.append(frame + struct.pack(">H", _crc16(frame)))
    return b"".join(out)


def _jpeg_last_scan(data: bytes) -> tuple[int, int, int]:
    """(start, end) of the last scan of a JPEG (its SOS segment and compressed data) and the
    position of its end-of-image marker."""
    pos, last = 2, (0, 0)
    while data[pos + 1] != 0xD9:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        start, pos = pos, pos + 2 + length
        if data[start + 1] == 0xDA:  # compressed data runs to the next marker but FF00 and RSTn
            pos = data.index(b"\xff", pos)
            while data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos = data.index(b"\xff", pos + 2)
            last = (start, pos)
    return last[0], last[1], pos


@functools.cache
def jpeg_scan_bomb(side: int, extra_scans: int) -> bytes:
    """A grey progressive `side` x `side` JPEG (Pillow's 6 scans) with its last scan, an AC
    refinement of all 63 coefficients (the costliest kind to decode: every block of the picture
    is visited), repeated `extra_scans` more times: 59 bytes a scan (issue 17, item 2)."""
    data = mf.encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=75)
    start, end, eoi = _jpeg_last_scan(data)
    return data[:eoi] + data[start:end] * extra_scans + data[eoi:]


@functools.cache
def grey16_png(width: int, height: int, level: int = 0x8080) -> bytes:
    """A real 16-bit greyscale PNG of one `level`, compressed row by row (6000 x 6000 is about
    70 KB): decoded, it is `2 x width x height` bytes of pixels (issue 17, item 9)."""
    row = b"\x00" + struct.pack(">H", level) * width
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# --------------------------------------------------------------------------- the corpus

DAMAGED = "damaged or incomplete"
NOT_AN_IMAGE = "not an image I can read"
NOT_AUDIO = "not an audio clip I can read"
NOT_MEDIA = "is not an image or audio clip"


def _cases() -> Iterator[BadInput]:
    jpeg, png = mf.make_jpeg(120, 90, seed=1), mf.make_png(120, 90, seed=1)
    yield BadInput("jpeg-truncated", "image", mf.truncated(jpeg, 0.5), mimetype="image/jpeg",
                   filename="photo.jpg", expect=(DAMAGED,))
    yield BadInput("jpeg-corrupt", "image", corrupt_jpeg(), mimetype="image/jpeg", filename="photo.jpg",
                   expect=(DAMAGED,))
    yield BadInput("png-truncated", "image", mf.truncated(png, 0.5), mimetype="image/png",
                   filename="drawing.png", expect=(DAMAGED,))
    yield BadInput("png-corrupt", "image", corrupt_png(), mimetype="image/png", filename="drawing.png",
                   expect=(DAMAGED,))
    yield BadInput("decompression-bomb", "image", mf.make_png_claiming_size(50_000, 50_000),
                   mimetype="image/png", filename="bomb.png", expect=("2,500 MP", "the limit is {max_pixels}"))
    yield BadInput("png-20000x20000", "image", black_and_white_png(20_000, 20_000), mimetype="image/png",
                   filename="poster.png", expect=("400 MP", "the limit is {max_pixels}"))
    first_frame = mf.encode(mf.solid_image(32, 32, BLUE), "PNG")
    yield BadInput("gif-animated", "image", mf.make_animated_gif([BLUE, RED]), mimetype="image/gif",
                   filename="party.gif", same_as=first_frame)
    yield BadInput("text-named-png", "image", b"this is a text file, not a picture\n" * 5,
                   mimetype="image/png", filename="notes.png", expect=(NOT_AN_IMAGE,))
    yield BadInput("not-audio-as-audio", "audio", b"%PDF-1.4\n% a document, not a voice message\n" * 5,
                   mimetype="audio/ogg", filename="voice-message.ogg", expect=(NOT_AUDIO,))
    yield BadInput("audio-0.1s", "audio", mf.make_audio("ogg", 0.1), mimetype="audio/ogg",
                   filename="voice-message.ogg", expect=("0.1 s long", "the minimum is {min_audio}"))
    yield BadInput("audio-2h", "audio", voice_message_claiming(TWO_HOURS), mimetype="audio/ogg",
                   filename="voice-message.ogg", expect=("7200 s long", "the limit is {max_audio}"))
    yield BadInput("audio-silent", "audio", mf.make_audio("ogg", 2.0, kind="silence"), mimetype="audio/ogg",
                   filename="voice-message.ogg")
    # Issue 17: a FLAC whose frames say 1 Hz (each 4,096-sample frame would be 65 million samples
    # at 16 kHz: +1.5 GB), a progressive JPEG of 306 scans (each scan decodes the whole picture),
    # a 16-bit greyscale PNG of 12 MP (once scaled to 8 bits in float64 copies of the picture).
    yield BadInput("flac-frames-at-1-hz", "audio", flac_frames_at(1), mimetype="audio/flac", filename="song.flac",
                   expect=("sample rate of 1 Hz", "send an ordinary recording"))
    yield BadInput("jpeg-306-scans", "image", jpeg_scan_bomb(2000, 300), mimetype="image/jpeg", filename="photo.jpg",
                   expect=("more than 150 progressive scans", "send it again"))
    yield BadInput("png-16-bit-12mp", "image", grey16_png(4000, 3000), mimetype="image/png", filename="scan.png",
                   same_as=mf.encode(mf.solid_image(32, 32, (128, 128, 128)), "PNG"))
    yield BadInput("query-empty", "text", text="", expect=("is empty",))
    yield BadInput("query-10000-chars", "text", text="a castle " * 1111 + "a",
                   expect=("the limit is {max_chars}",))
    yield BadInput("query-only-operators", "text", text="+ -", expect=("no words to search for",))
    yield BadInput("attachments-11", "count", mf.make_picture(1), mimetype="image/jpeg", filename="photo.jpg",
                   expect=("at most {max_attachments}",))
    yield BadInput("mimetype-exe", "image", b"MZ\x90\x00" + bytes(60), mimetype="application/x-msdownload",
                   filename="setup.exe", expect=("setup.exe", NOT_MEDIA))
    yield BadInput("mimetype-avi", "audio", b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(40),
                   mimetype="video/x-msvideo", filename="clip.avi", expect=("clip.avi", NOT_MEDIA))
    yield BadInput("file-30mb", "image", b"\x89PNG\r\n\x1a\n", mimetype="image/png", filename="huge.png",
                   declared_size=HUGE_FILE_BYTES, expect=("limit", "{max_file}"))


CASES: list[BadInput] = list(_cases())
CASE_IDS = [case.name for case in CASES]
assert len(set(CASE_IDS)) == len(CASES)


# --------------------------------------------------------------------------- malformed requests
# Issue 17, items 10 and 11: requests (not attachments) that once gave a 500 and a traceback, or
# were read whole past a cap. The web API and the Slack endpoint tests send each one of their
# target and expect a 4xx (Slack's text cases: a message told to the user) whose error contains
# `expect`, and no error in the log.

RequestTarget = Literal["web-form", "web-action", "slack-command", "slack-timestamp"]


@dataclass(frozen=True)
class MalformedRequest:
    """One malformed request. web-form: the search form with this `limit` (and the text "cat");
    web-action: POST /api/action with `body` (`chunked`: sent without a length, as a stream);
    slack-command: `/search` with `text`; slack-timestamp: a signed command whose
    X-Slack-Request-Timestamp header is `timestamp`. `status`: the HTTP answer expected."""

    name: str
    target: RequestTarget
    status: int = 400
    limit: str = ""
    body: bytes = b""
    chunked: bool = False
    text: str = ""
    timestamp: str = ""
    expect: tuple[str, ...] = ()


# "²" passes str.isdigit() and fails int().
SUPERSCRIPT_TWO = "\u00b2"
MALFORMED_REQUESTS: list[MalformedRequest] = [
    MalformedRequest("form-limit-superscript", "web-form", limit=SUPERSCRIPT_TWO,
                     expect=("a whole number, 1 or more",)),
    MalformedRequest("action-limit-superscript", "web-action",
                     body=f'{{"id": "sa:more:0", "limit": "{SUPERSCRIPT_TWO}"}}'.encode(),
                     expect=("a whole number, 1 or more",)),
    MalformedRequest("action-2000-brackets", "web-action", body=b"[" * 2000, expect=("send the action as JSON",)),
    MalformedRequest("action-chunked-100kb", "web-action", body=b'{"id": "sa:more:0"' + b" " * 100_000 + b"}",
                     chunked=True, expect=("too long",)),
    MalformedRequest("slack-limit-superscript", "slack-command", status=200, text=f"cat limit:{SUPERSCRIPT_TWO}",
                     expect=("is not a number of results",)),
    MalformedRequest("slack-timestamp-abc", "slack-timestamp", status=401, timestamp="abc"),
    MalformedRequest("slack-timestamp-400-digits", "slack-timestamp", status=401, timestamp="9" * 400),
]


def malformed(*targets: RequestTarget) -> list:
    """The malformed requests of these targets, as pytest params named by case."""
    import pytest

    return [pytest.param(case, id=case.name) for case in MALFORMED_REQUESTS if case.target in targets]


# --------------------------------------------------------------------------- files a folder ingest meets
# Issue 17, item 7: a link that leads out of the folder (indexed only with --follow-links) and a
# file far over the size limit (refused from its size, never read). The ingest tests put each
# in a folder and expect the warning or failure that names it.


@dataclass(frozen=True)
class FolderEntry:
    """`make(folder, outside)` puts the entry in `folder` (what it points to goes in `outside`);
    `expect`: fragments of the ingest's warning or failure line for it."""

    name: str
    make: Callable[[Path, Path], None]
    expect: tuple[str, ...]


def _link_out_of_the_folder(folder: Path, outside: Path) -> None:
    (outside / "secret.jpg").write_bytes(mf.make_picture(77))
    (folder / "link.jpg").symlink_to(outside / "secret.jpg")


def _sparse_2_5_gb_jpg(folder: Path, outside: Path) -> None:
    with open(folder / "huge.jpg", "wb") as huge:
        huge.truncate(2_500_000_000)  # sparse: 2.5 GB that costs no disk


FOLDER_ENTRIES: list[FolderEntry] = [
    FolderEntry("link-out-of-the-folder", _link_out_of_the_folder, ("skipping link.jpg", "--follow-links")),
    FolderEntry("jpg-2.5gb-sparse", _sparse_2_5_gb_jpg, ("huge.jpg", "not read")),
]
