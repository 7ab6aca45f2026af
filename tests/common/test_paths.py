"""The path normaliser and naming rules: tables like pyftpdlib's, and properties."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput, InvalidName
from common.paths import (
    decode_wire,
    join,
    normalise,
    normalise_email,
    parent_and_name,
    parts,
    username_key,
    validate_name,
    validate_username,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)

E_ACUTE_NFC = "\u00e9"  # é, 2 UTF-8 bytes
E_ACUTE_NFD = "e\u0301"  # e + combining acute, 3 UTF-8 bytes
HAN = "\u65e5"  # 日, 3 UTF-8 bytes
EMOJI = "\U0001f600"  # 😀, 4 UTF-8 bytes

# --- validate_name -----------------------------------------------------------------------

# (input, expected NFC name)
VALID_NAMES = [
    ("a", "a"),
    ("Report.PDF", "Report.PDF"),  # case preserved, never folded
    ("report.pdf", "report.pdf"),
    (".hidden", ".hidden"),
    ("...", "..."),
    ("..a", "..a"),
    (" leading space", " leading space"),  # leading/trailing spaces are legal, as on POSIX
    ("trailing space ", "trailing space "),
    ("   ", "   "),
    ("a\\b", "a\\b"),  # backslash is an ordinary character, not a separator
    ("..\\..", "..\\.."),
    ('C:*?"<>|', 'C:*?"<>|'),
    (f"caf{E_ACUTE_NFD}", f"caf{E_ACUTE_NFC}"),  # NFD in, NFC out
    (f"caf{E_ACUTE_NFC}", f"caf{E_ACUTE_NFC}"),
    ("\u1100\u1161", "\uac00"),  # Hangul jamo compose to one syllable
    ("\u65e5\u672c\u8a9e", "\u65e5\u672c\u8a9e"),
    (f"smile {EMOJI}", f"smile {EMOJI}"),
    ("\u00a0nbsp", "\u00a0nbsp"),  # a space separator (Zs) is not a control character
    ("a" * 255, "a" * 255),
    (E_ACUTE_NFC * 127 + "a", E_ACUTE_NFC * 127 + "a"),  # 255 bytes with 2-byte characters
    (E_ACUTE_NFC * 127, E_ACUTE_NFC * 127),  # 254 bytes
    (HAN * 85, HAN * 85),  # 255 bytes with 3-byte characters
    (HAN * 84 + "ab", HAN * 84 + "ab"),  # 254 bytes
    (EMOJI * 63 + "abc", EMOJI * 63 + "abc"),  # 255 bytes with 4-byte characters
    ("a" * 253 + E_ACUTE_NFD, "a" * 253 + E_ACUTE_NFC),  # 256 bytes as NFD, 255 after NFC
]

CONTROL_CHARACTERS = ["\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"]
FORMAT_CHARACTERS = [
    *(chr(c) for c in range(0x202A, 0x202F)),  # bidi embeddings and overrides
    *(chr(c) for c in range(0x2066, 0x206A)),  # bidi isolates
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u200d",  # ZERO WIDTH JOINER
    "\u2060",  # WORD JOINER
    "\ufeff",  # BYTE ORDER MARK
    "\u00ad",  # SOFT HYPHEN
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A
]

# (input, pattern the message must match: it names the rule)
REFUSED_NAMES = [
    ("", "empty"),
    (".", r'"\." or "\.\."'),
    ("..", r'"\." or "\.\."'),
    ("a/b", 'contain "/"'),
    ("/", 'contain "/"'),
    ("a\x00b", "NUL"),
    ("\x00", "NUL"),
    *((f"a{c}b", "control characters") for c in CONTROL_CHARACTERS),
    *((f"a{c}b", "invisible formatting") for c in FORMAT_CHARACTERS),
    ("a\u2028b", "line separator"),
    ("a\u2029b", "paragraph separator"),
    ("a\ufffdb", "U\\+FFFD"),
    ("\ufffd", "U\\+FFFD"),
    ("a\ud800", "surrogate"),
    ("\udfffb", "surrogate"),
    ("a" * 256, "at most 255 bytes"),
    (E_ACUTE_NFC * 128, "at most 255 bytes"),  # 256 bytes
    (HAN * 85 + "a", "at most 255 bytes"),  # 256 bytes
    (EMOJI * 64, "at most 255 bytes"),  # 256 bytes
    (E_ACUTE_NFD * 128, "at most 255 bytes"),  # 256 bytes even after NFC
]


@pytest.mark.parametrize(("name", "expected"), VALID_NAMES)
def test_valid_names_come_back_in_nfc(name, expected):
    assert validate_name(name) == expected


@pytest.mark.parametrize(("name", "rule"), REFUSED_NAMES)
def test_refused_names_say_which_rule(name, rule):
    with pytest.raises(InvalidName, match=rule):
        validate_name(name)


@pytest.mark.parametrize("name", ["secret\u202egnp.exe", "payroll\x00.csv", "x" * 300])
def test_refusal_message_does_not_echo_the_name(name):
    with pytest.raises(InvalidName) as refused:
        validate_name(name)
    assert name not in refused.value.message
    assert name[:5] not in refused.value.message


def test_nfc_and_nfd_spellings_are_the_same_name():
    assert validate_name(f"Caf{E_ACUTE_NFD}") == validate_name(f"Caf{E_ACUTE_NFC}")


def test_names_are_case_sensitive():
    assert validate_name("Report") != validate_name("report")


def test_non_text_name_is_a_programming_error():
    with pytest.raises(TypeError):
        validate_name(b"bytes")


# --- normalise ---------------------------------------------------------------------------

# (path, cwd, expected)
NORMALISED = [
    ("/", "/", "/"),
    ("", "/", "/"),
    ("", "/a/b", "/a/b"),
    (".", "/a", "/a"),
    ("./", "/a", "/a"),
    ("..", "/a/b", "/a"),
    ("../..", "/a/b", "/"),
    ("../../../..", "/a", "/"),  # clamped at the root
    ("/..", "/", "/"),
    ("/../..", "/a", "/"),
    ("/../x", "/", "/x"),
    ("/a/..", "/", "/"),
    ("/a/b/../c", "/", "/a/c"),
    ("/a/./b/.", "/", "/a/b"),
    ("a", "/", "/a"),
    ("a/b", "/x", "/x/a/b"),
    ("../y", "/x", "/y"),
    ("/abs", "/x/y", "/abs"),  # absolute paths ignore cwd
    ("b", "/a/../c", "/c/b"),  # cwd itself is resolved too
    ("//a///b//", "/", "/a/b"),
    ("a/", "/x", "/x/a"),
    ("/a/b/", "/", "/a/b"),
    ("///", "/", "/"),
    ("a\\b", "/", "/a\\b"),  # backslash is not a separator (legal on POSIX)
    ("..\\x", "/", "/..\\x"),  # so "..\" does not climb
    ("/Shared/Bob/Reports", "/", "/Shared/Bob/Reports"),  # case preserved
    ("/ABC/abc", "/", "/ABC/abc"),
    ("...", "/", "/..."),
    (" a /b ", "/", "/ a /b "),  # spaces kept
    (f"/caf{E_ACUTE_NFD}/x", "/", f"/caf{E_ACUTE_NFC}/x"),  # NFC applied
    (f"caf{E_ACUTE_NFD}", f"/caf{E_ACUTE_NFD}", f"/caf{E_ACUTE_NFC}/caf{E_ACUTE_NFC}"),
]

# (path, cwd, rule)
REFUSED_PATHS = [
    ("/a\x00b", "/", "NUL"),
    ("a\x00", "/x", "NUL"),
    ("/ok/\u202eevil", "/", "invisible formatting"),
    ("/\ufffd", "/", "U\\+FFFD"),
    ("/a/\n/b", "/", "control characters"),
    ("/" + "x" * 256, "/", "at most 255 bytes"),
    ("/bad\x00/..", "/", "NUL"),  # an illegal name is refused even if ".." removes it
    ("x", "/bad\x00", "NUL"),
]


@pytest.mark.parametrize(("path", "cwd", "expected"), NORMALISED)
def test_normalise(path, cwd, expected):
    assert normalise(path, cwd) == expected


@pytest.mark.parametrize(("path", "cwd", "rule"), REFUSED_PATHS)
def test_normalise_refuses_illegal_names(path, cwd, rule):
    with pytest.raises(InvalidName, match=rule):
        normalise(path, cwd)


def test_normalise_defaults_to_the_root():
    assert normalise("a/../b") == "/b"


def test_relative_cwd_is_a_programming_error():
    with pytest.raises(ValueError):
        normalise("a", "relative")


# --- parts, parent_and_name, join --------------------------------------------------------

PARTS = [
    ("/", ()),
    ("", ()),
    ("/a", ("a",)),
    ("//a//b/", ("a", "b")),
    ("/a/../b/./c", ("b", "c")),
    (f"/caf{E_ACUTE_NFD}", (f"caf{E_ACUTE_NFC}",)),
]

PARENT_AND_NAME = [
    ("/a", ("/", "a")),
    ("/a/b", ("/a", "b")),
    ("/a/b/", ("/a", "b")),
    ("a/b/c", ("/a/b", "c")),
    ("/a/b/..", ("/", "a")),
]

JOINED = [
    ("/", "a", "/a"),
    ("/a", "b", "/a/b"),
    ("/a/", "b", "/a/b"),
    ("//a//", "b c", "/a/b c"),
    ("/a", "x\\y", "/a/x\\y"),
    ("/a", f"caf{E_ACUTE_NFD}", f"/a/caf{E_ACUTE_NFC}"),
]


@pytest.mark.parametrize(("path", "expected"), PARTS)
def test_parts(path, expected):
    assert parts(path) == expected


@pytest.mark.parametrize(("path", "expected"), PARENT_AND_NAME)
def test_parent_and_name(path, expected):
    assert parent_and_name(path) == expected


@pytest.mark.parametrize("path", ["/", "", "/..", "/a/..", "//"])
def test_root_has_no_parent_or_name(path):
    with pytest.raises(InvalidName, match="root"):
        parent_and_name(path)


@pytest.mark.parametrize(("parent", "name", "expected"), JOINED)
def test_join(parent, name, expected):
    assert join(parent, name) == expected


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/a", "a\x00", "\u200b"])
def test_join_takes_exactly_one_valid_name(name):
    with pytest.raises(InvalidName):
        join("/a", name)


# --- decode_wire -------------------------------------------------------------------------

DECODED = [
    (b"report.pdf", "report.pdf"),
    ("caf\u00e9".encode(), "caf\u00e9"),
    (b"/a/b", "/a/b"),  # structure is left to normalise
    ("\U0001f600".encode(), "\U0001f600"),
    (b"\xef\xbf\xbd", "\ufffd"),  # a real U+FFFD decodes; validate_name refuses it later
]

UNDECODABLE = [
    (b"\xff", "UTF-8"),
    (b"caf\xe9", "UTF-8"),  # Latin-1, not UTF-8
    (b"\xc3", "UTF-8"),  # truncated sequence
    (b"\xc0\xaf", "UTF-8"),  # overlong "/"
    (b"\xed\xa0\x80", "UTF-8"),  # an encoded surrogate
    (b"\xf4\x90\x80\x80", "UTF-8"),  # beyond U+10FFFF
    (b"a\x00b", "NUL"),
    (b"\x00", "NUL"),
]


@pytest.mark.parametrize(("raw", "expected"), DECODED)
def test_decode_wire(raw, expected):
    assert decode_wire(raw) == expected


@pytest.mark.parametrize(("raw", "rule"), UNDECODABLE)
def test_decode_wire_refuses(raw, rule):
    with pytest.raises(InvalidName, match=rule):
        decode_wire(raw)


def test_decode_wire_accepts_buffers():
    assert decode_wire(bytearray(b"ab")) == decode_wire(memoryview(b"ab")) == "ab"


def test_different_invalid_byte_names_never_collide_on_replacement_character():
    for raw in (b"caf\xe9", b"caf\xff"):
        with pytest.raises(InvalidName):
            validate_name(decode_wire(raw))
    with pytest.raises(InvalidName, match="U\\+FFFD"):
        validate_name(decode_wire(b"caf\xef\xbf\xbd"))


# --- user names --------------------------------------------------------------------------

VALID_USERNAMES = [
    "a",
    "Z",
    "0",
    "alice",
    "Alice.Smith",  # typed form kept for display
    "bob_1",
    "x-y",
    "ops@example.com",
    "a+tag",
    "1st",
    "a" * 64,
]

# (input, pattern of the message)
REFUSED_USERNAMES = [
    ("", "empty"),
    ("a" * 65, "at most 64"),
    (".alice", "start with a letter or a digit"),
    ("_alice", "start with a letter or a digit"),
    ("-alice", "start with a letter or a digit"),
    ("@alice", "start with a letter or a digit"),
    ("+alice", "start with a letter or a digit"),
    ("al ice", "only ASCII letters"),
    (" alice", "only ASCII letters"),
    ("alice ", "only ASCII letters"),
    ("alice\n", "only ASCII letters"),  # no "$ matches before a newline" trap
    ("al\x00ice", "only ASCII letters"),
    ("al\u00efce", "only ASCII letters"),
    ("\uff41lice", "only ASCII letters"),  # fullwidth a
    ("\u0661", "only ASCII letters"),  # Arabic-Indic digit one
    ("a/b", "only ASCII letters"),
    ("a\\b", "only ASCII letters"),
    ("a:b", "only ASCII letters"),
    ("a\u200bb", "only ASCII letters"),
]

USERNAME_KEYS = [
    ("alice", "alice"),
    ("Alice", "alice"),
    ("ALICE.Smith@Example.COM", "alice.smith@example.com"),
    ("Bob_1+X", "bob_1+x"),
    ("\u212a", "\u212a"),  # KELVIN SIGN is not folded onto "k"
    ("\u0130", "\u0130"),  # dotted capital I is not folded either
]


@pytest.mark.parametrize("name", VALID_USERNAMES)
def test_valid_usernames_are_returned_unchanged(name):
    assert validate_username(name) == name


@pytest.mark.parametrize(("name", "rule"), REFUSED_USERNAMES)
def test_refused_usernames_say_why(name, rule):
    with pytest.raises(InvalidInput, match=rule):
        validate_username(name)


@pytest.mark.parametrize(("name", "expected"), USERNAME_KEYS)
def test_username_key_lowercases_ascii_only(name, expected):
    assert username_key(name) == expected


def test_usernames_differing_in_case_share_a_key():
    assert username_key(validate_username("Alice")) == username_key(validate_username("aLICE"))


# --- emails ------------------------------------------------------------------------------

NORMALISED_EMAILS = [
    ("alice@example.com", "alice@example.com"),
    ("  Alice@Example.COM\n", "alice@example.com"),
    ("Stra\u00dfe@example.de", "strasse@example.de"),  # case-folded, not just lower-cased
    (f"Jos{E_ACUTE_NFD}@example.com", f"jos{E_ACUTE_NFC}@example.com"),
    ("a@b", "a@b"),
    ("a" * 248 + "@b.com", "a" * 248 + "@b.com"),  # 254 characters
]

# (input, pattern of the message)
REFUSED_EMAILS = [
    ("", "empty"),
    ("   ", "empty"),
    ("alice", "exactly one @"),
    ("a@@b", "exactly one @"),
    ("a@b@c", "exactly one @"),
    ("@example.com", "before the @"),
    ("alice@", "before the @"),
    ("al ice@example.com", "spaces"),
    ("alice@exa mple.com", "spaces"),
    ("alice\t@example.com", "spaces"),
    ("alice\x00@example.com", "control"),
    ("alice\u200b@example.com", "control"),
    ("alice\u00a0@example.com", "spaces"),
    ("a" * 249 + "@b.com", "at most 254"),  # 255 characters
]


@pytest.mark.parametrize(("email", "expected"), NORMALISED_EMAILS)
def test_normalise_email(email, expected):
    assert normalise_email(email) == expected


@pytest.mark.parametrize(("email", "rule"), REFUSED_EMAILS)
def test_refused_emails_say_why(email, rule):
    with pytest.raises(InvalidInput, match=rule):
        normalise_email(email)


# --- properties --------------------------------------------------------------------------

INTERESTING_COMPONENTS = st.sampled_from(
    [
        ".", "..", "", "/", "//", "a", "B", "\\", " ", "...",
        E_ACUTE_NFC, E_ACUTE_NFD, "\u1100\u1161", EMOJI,
        "\x00", "\n", "\u202e", "\u200b", "\ufeff", "\ufffd", "\ud800",
    ]
)  # fmt: skip
COMPONENTS = st.one_of(
    INTERESTING_COMPONENTS,
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    # Long names around the 255-byte limit, mixing 1- to 4-byte characters and combining marks.
    st.text(alphabet=["a", "e", "\u0301", E_ACUTE_NFC, HAN, EMOJI], min_size=60, max_size=130),
)
RAW_PATHS = st.builds(
    lambda leading, pieces: leading + "/".join(pieces),
    st.sampled_from(["", "/", "//"]),
    st.lists(COMPONENTS, max_size=8),
)
CWDS = st.lists(st.sampled_from(["a", "B", "..", ".", "Shared", E_ACUTE_NFD]), max_size=4).map(
    lambda pieces: "/" + "/".join(pieces)
)


def _outcome(function, *args):
    """Return the result of function(*args), or the InvalidName class if it refused."""
    try:
        return function(*args)
    except InvalidName:
        return InvalidName


@PROPERTY_SETTINGS
@given(RAW_PATHS, CWDS)
def test_normalise_yields_a_canonical_path_or_invalid_name(path, cwd):
    result = _outcome(normalise, path, cwd)
    if result is InvalidName:
        return
    assert result.startswith("/")
    assert "//" not in result
    assert result == "/" or not result.endswith("/")
    components = result.split("/")[1:] if result != "/" else []
    for component in components:
        assert component not in (".", "..")
        assert validate_name(component) == component
    assert normalise(result) == result
    assert normalise(result, cwd) == result
    assert normalise(result, "/elsewhere") == result


@PROPERTY_SETTINGS
@given(RAW_PATHS, CWDS)
def test_relative_path_equals_its_join_onto_cwd(path, cwd):
    relative = path.lstrip("/")
    assert _outcome(normalise, relative, cwd) == _outcome(normalise, f"{cwd}/{relative}")


@PROPERTY_SETTINGS
@given(RAW_PATHS)
def test_normalise_ignores_canonically_equivalent_spellings(path):
    if any(unicodedata.category(char) == "Cs" for char in path):
        return  # lone surrogates are refused whatever their spelling
    nfc = unicodedata.normalize("NFC", path)
    nfd = unicodedata.normalize("NFD", path)
    assert _outcome(normalise, nfd) == _outcome(normalise, nfc) == _outcome(normalise, path)


@PROPERTY_SETTINGS
@given(COMPONENTS)
def test_validate_name_is_idempotent_and_bounded(name):
    result = _outcome(validate_name, name)
    if result is InvalidName:
        return
    assert unicodedata.is_normalized("NFC", result)
    assert 0 < len(result.encode("utf-8")) <= 255
    assert validate_name(result) == result


@PROPERTY_SETTINGS
@given(RAW_PATHS)
def test_parent_and_name_round_trip_through_join(path):
    canonical = _outcome(normalise, path)
    if canonical in (InvalidName, "/"):
        return
    parent, name = parent_and_name(canonical)
    assert join(parent, name) == canonical
    assert parts(canonical) == (*parts(parent), name)


@PROPERTY_SETTINGS
@given(st.binary(max_size=24))
def test_decode_wire_is_injective(raw):
    text = _outcome(decode_wire, raw)
    if text is not InvalidName:
        assert text.encode("utf-8") == raw
        assert "\x00" not in text
