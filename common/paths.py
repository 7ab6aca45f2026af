"""The one virtual-path normaliser and the naming rules for files, folders, users and emails.

Virtual paths are POSIX-like strings inside one workspace: absolute, "/" separated, root
"/". They are resolved purely lexically; nothing here ever touches the OS file system.

Naming rules for a file or folder name (they hold on every door):

- Names are stored in Unicode NFC, so a name typed as NFD (macOS) and as NFC (Windows,
  Linux) is the same name. Comparison is case-sensitive: "Report" and "report" differ.
- Refused: the empty name, "." and "..", "/", NUL, control characters (category Cc),
  format characters (Cf: bidi overrides and isolates, LRM/RLM, zero-width characters,
  word joiner, BOM, soft hyphen...), line and paragraph separators (U+2028, U+2029, which
  many tools treat as line breaks), U+FFFD (what a lossy decoder leaves of invalid bytes,
  so two different byte names could collide), lone surrogates, and names longer than 255
  UTF-8 bytes after NFC.
- Allowed, as on POSIX: leading and trailing spaces, a leading dot, and every other
  printable character including "\\", ":", "*", "?" and '"'. A backslash is an ordinary
  character of the name, never a separator.

Refusing every Cf character also refuses ZWJ emoji sequences and ZWNJ in Persian text; that
is the price of never showing a name whose rendering differs from its bytes.
"""

from __future__ import annotations

import re
import unicodedata

from common.errors import InvalidInput, InvalidName

MAX_NAME_BYTES = 255
MAX_USERNAME_CHARS = 64
MAX_EMAIL_CHARS = 254
ROOT = "/"

_USERNAME_CHARS = re.compile(r"[A-Za-z0-9._@+\-]*")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Unicode categories refused anywhere in a name, with the rule each one breaks.
_REFUSED_CATEGORIES = {
    "Cc": "A name cannot contain control characters",
    "Cf": "A name cannot contain invisible formatting characters "
    "(such as bidi overrides or zero-width characters)",
    "Zl": "A name cannot contain line separators",
    "Zp": "A name cannot contain paragraph separators",
    "Cs": "A name cannot contain lone surrogates (it is not valid Unicode text)",
}


def validate_name(name: str) -> str:
    """Return the NFC form of one file or folder name, or raise InvalidName naming the rule."""
    if not isinstance(name, str):
        raise TypeError("name must be str")
    if not name:
        raise InvalidName("A name cannot be empty")
    # Surrogates first: they cannot be encoded, so later checks would fail obscurely.
    _refuse_characters(name, only=("Cs",))
    nfc = unicodedata.normalize("NFC", name)
    if nfc in (".", ".."):
        raise InvalidName('A name cannot be "." or ".."')
    if "/" in nfc:
        raise InvalidName('A name cannot contain "/"')
    if "\x00" in nfc:
        raise InvalidName("A name cannot contain a NUL character")
    if "\ufffd" in nfc:
        raise InvalidName(
            "A name cannot contain U+FFFD (the replacement character left by invalid UTF-8)"
        )
    _refuse_characters(nfc, only=tuple(_REFUSED_CATEGORIES))
    size = len(nfc.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise InvalidName(
            f"A name can be at most {MAX_NAME_BYTES} bytes in UTF-8 (this one has {size})"
        )
    return nfc


def _refuse_characters(text: str, only: tuple[str, ...]) -> None:
    """Raise InvalidName for the first character of `text` whose category is in `only`."""
    for char in text:
        category = unicodedata.category(char)
        if category in only:
            raise InvalidName(_REFUSED_CATEGORIES[category])


def normalise(path: str, cwd: str = ROOT) -> str:
    """Resolve a client path, absolute or relative to `cwd`, into a canonical absolute path."""
    if not isinstance(path, str) or not isinstance(cwd, str):
        raise TypeError("path and cwd must be str")
    if not cwd.startswith("/"):
        # cwd is server state, never client input: a relative one is a bug in the caller.
        raise ValueError("cwd must be an absolute virtual path")
    full = path if path.startswith("/") else f"{cwd}/{path}"
    return _from_parts(_resolve(full))


def _resolve(path: str) -> list[str]:
    """Split `path` into validated NFC components, dropping "." and resolving ".." lexically."""
    components: list[str] = []
    for piece in path.split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            # Clamped at the root, like "cd /.." in a shell: never an escape, never an error.
            if components:
                components.pop()
            continue
        # Every named component is validated, even one a later ".." removes, so a path
        # that mentions an illegal name is refused rather than silently accepted.
        components.append(validate_name(piece))
    return components


def _from_parts(components: list[str] | tuple[str, ...]) -> str:
    """Build the canonical absolute path of a sequence of already valid components."""
    return "/" + "/".join(components)


def parts(path: str) -> tuple[str, ...]:
    """Return the validated components of `path` (normalised against the root); () for the root."""
    canonical = normalise(path)
    return tuple(canonical.split("/")[1:]) if canonical != ROOT else ()


def parent_and_name(path: str) -> tuple[str, str]:
    """Split `path` into its parent's canonical path and its last name; the root has neither."""
    components = parts(path)
    if not components:
        raise InvalidName("The root folder has no name and no parent")
    return _from_parts(components[:-1]), components[-1]


def join(parent: str, name: str) -> str:
    """Return the canonical path of the single name `name` inside the folder `parent`."""
    return _from_parts((*parts(parent), validate_name(name)))


def decode_wire(raw: bytes) -> str:
    """Decode a name or path received from FTP or SFTP as strict UTF-8, refusing NUL."""
    try:
        text = bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        # Never decode with "replace": two different byte names would become one U+FFFD name.
        raise InvalidName("A name must be valid UTF-8") from None
    if "\x00" in text:
        raise InvalidName("A name cannot contain a NUL character")
    return text


def validate_username(name: str) -> str:
    """Return `name` unchanged if it is a valid user name, or raise InvalidInput saying why."""
    if not isinstance(name, str):
        raise TypeError("name must be str")
    if not name:
        raise InvalidInput("A user name cannot be empty")
    if len(name) > MAX_USERNAME_CHARS:
        raise InvalidInput(f"A user name can be at most {MAX_USERNAME_CHARS} characters")
    if not _USERNAME_CHARS.fullmatch(name):
        raise InvalidInput(
            "A user name may contain only ASCII letters, digits and the characters . _ - @ +"
        )
    if not name[0].isalnum():
        raise InvalidInput("A user name must start with a letter or a digit")
    return name


def username_key(name: str) -> str:
    """Return the ASCII-lower-cased form of a user name, the input of its blind index."""
    # Only A-Z are folded: str.lower() would fold e.g. the Kelvin sign onto "k". No
    # validation here, so a login with a malformed name takes the same path as any other.
    return name.translate(_ASCII_LOWER)


def normalise_email(email: str) -> str:
    """Return the trimmed, NFC, case-folded form of an email address, or raise InvalidInput."""
    if not isinstance(email, str):
        raise TypeError("email must be str")
    trimmed = email.strip()
    if not trimmed:
        raise InvalidInput("An email address cannot be empty")
    if len(trimmed) > MAX_EMAIL_CHARS:
        raise InvalidInput(f"An email address can be at most {MAX_EMAIL_CHARS} characters")
    if any(_is_space_or_control(char) for char in trimmed):
        raise InvalidInput("An email address cannot contain spaces or control characters")
    local, at, domain = trimmed.partition("@")
    if not at or "@" in domain:
        raise InvalidInput("An email address must contain exactly one @")
    if not local or not domain:
        raise InvalidInput("An email address needs a name before the @ and a domain after it")
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", trimmed).casefold())


def _is_space_or_control(char: str) -> bool:
    """Tell whether `char` is whitespace, a control, format or surrogate character."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")
