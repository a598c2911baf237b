"""Safety of the config strings that become paths, file names, wildcard values or command-line
arguments: no '..' component, no shell metacharacters, no control characters."""

from __future__ import annotations

from .errors import ConfigError


def check_path_name(name, what: str, hidden_ok: bool = False) -> str:
    """``name`` if it is safe to build a path from: relative, no '..' component, not a hidden
    ``_`` base (unless ``hidden_ok``: an ``inherits``); else a one-line ConfigError naming ``what``."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    hidden = text.startswith("_") and not hidden_ok
    if not text or text.startswith(("/", "\\", "~")) or ".." in parts or hidden:
        raise ConfigError(f"{what} {text!r} must be a plain relative name (no '..', no leading '/', '~' or '_')")
    return text


# Characters that mean something to a shell (or end a line): no config value that can reach a
# command line or a file name may hold one (check_safe_text).
SHELL_METACHARACTERS = frozenset(";&|$`<>\"'\\()*?[]{}!#")
# What a name that becomes a path component or a wildcard value may hold (surface names, presets).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+=:@-")


def check_safe_text(text, what: str, allow_space: bool = True) -> str:
    """``text`` if it holds no control character (newline, tab, ...) and no shell metacharacter
    (; & | $ ` < > quotes backslash parentheses globs ! #); else a ConfigError naming ``what``."""
    text = str(text)
    bad = sorted({c for c in text if c in SHELL_METACHARACTERS or ord(c) < 32 or ord(c) == 127
                  or (c.isspace() and not (allow_space and c == " "))})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(f"{what} {text!r} holds {shown}: no shell metacharacters, quotes or control characters "
                          f"(a config value must never reach a shell or a file name as code)")
    return text


def check_name(name, what: str) -> str:
    """A name that becomes a file-name component or a Snakemake wildcard value (a surface or preset
    name): letters, digits and _ . + = : @ -, not starting with '.', '_' or '-'."""
    text = str(name)
    check_safe_text(text, what, allow_space=False)
    if not text or not set(text) <= _NAME_CHARS or text[0] in "._-":
        raise ConfigError(f"{what} {text!r} must be a plain name: letters, digits and _ . + = : @ - "
                          f"(not starting with '.', '_' or '-', no '/' or spaces)")
    return text


def check_data_path(path, what: str) -> str:
    """A user-given data location (``dataset_dir``): absolute or relative, but no '..' component and
    nothing a shell would read as code."""
    text = check_safe_text(path, what)
    if not text.strip() or ".." in text.replace("\\", "/").split("/"):
        raise ConfigError(f"{what} {text!r} must be a non-empty path without a '..' component")
    return text

