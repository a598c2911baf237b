"""Every run-config key with its type, default, allowed values, when it is read and its doc, from the
fields themselves: ``python -m llqr.train --list-keys`` (plain text) and ``--list-keys --markdown``
(docs/configuration.md, which a test keeps equal to this output)."""

from __future__ import annotations

import json
import textwrap

from .fields import FIELDS
from .keyspec import Not, field_default

COMMAND = "python -m llqr.train --list-keys --markdown > docs/configuration.md"


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # a schedule: its family name when it has no parameters
        return value["name"] if set(value) == {"name"} else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def type_of(f) -> str:
    kind = f.metadata["kind"]
    return f"{kind} or null" if f.metadata["nullable"] else kind


def allowed(f) -> str:
    """Choices, or the range a number (each number of a list) must lie in; '' when anything of the type goes."""
    meta = f.metadata
    if meta["kind"] == "schedule":
        return "a schedule family (llqr/config/schedule_families.py)"
    if meta["choices"] is not None:
        return ", ".join(_value(c) for c in meta["choices"])
    parts = []
    if meta["gt"] is not None:
        parts.append(f"> {_value(meta['gt'])}")
    if meta["minimum"] is not None:
        parts.append(f">= {_value(meta['minimum'])}")
    if meta["maximum"] is not None:
        parts.append(f"<= {_value(meta['maximum'])}")
    return ", ".join(parts)


def _condition(key: str, condition) -> str:
    if isinstance(condition, Not):
        values = condition.values
        if len(values) == 1:
            return f"{key} != {_value(values[0])}"
        return f"{key} not in {{{', '.join(_value(v) for v in values)}}}"
    if len(condition) == 1:
        return f"{key} = {_value(condition[0])}"
    return f"{key} in {{{', '.join(_value(v) for v in condition)}}}"


def read_when(f) -> str:
    """When a run reads the key, in words ("always" when unconditional)."""
    alternatives = f.metadata["read_when"]
    if not alternatives:
        return "always"
    return " or ".join(" and ".join(_condition(k, c) for k, c in alt.items()) for alt in alternatives)


def notes(f) -> str:
    meta = f.metadata
    out = []
    if meta["bookkeeping"]:
        out.append("bookkeeping: not in cell ids, rule params or checkpoint keys")
    if meta["inert"]:
        out.append("inert: never changes a run")
    if not meta["params_at_default"]:
        out.append("left out of rule params at its default")
    return "; ".join(out)


def rows(fields: dict | None = None) -> list[dict]:
    """One row per key, in the fields' order."""
    return [{"key": name, "type": type_of(f), "default": _value(field_default(f)), "allowed": allowed(f),
             "read": read_when(f), "notes": notes(f), "doc": f.metadata["doc"]}
            for name, f in (fields or FIELDS).items()]


def render_text(fields: dict | None = None, width: int = 100) -> str:
    """A block per key: ``key: type = default  [allowed]``, when it is read, notes, then the doc."""
    out = []
    for r in rows(fields):
        head = f"{r['key']}: {r['type']} = {r['default']}"
        if r["allowed"]:
            head += f"  [{r['allowed']}]"
        out.append(head)
        out.append(f"    read: {r['read']}")
        if r["notes"]:
            out.append(f"    note: {r['notes']}")
        out.extend(textwrap.wrap(r["doc"], width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(fields: dict | None = None) -> str:
    """docs/configuration.md: a header saying how it is made, then one table row per key."""
    header = (
        "# Configuration keys\n\n"
        f"Generated from the fields of `llqr/config/fields.py` by `{COMMAND}`; do not edit it by hand "
        "(tests/test_config_fields.py fails when it is out of date).\n\n"
        "A run's config is its preset's values (`config/presets/*.yaml`), then a surface's axis variants and "
        "rules, or `key=value` arguments of `python -m llqr.train`; every key below has a default. **Read when**: "
        "where the condition does not hold the key cannot change the run, and the workflow resets it to the "
        "preset's value, so it never splits cells. Keys marked *bookkeeping* change how a run is looked after, "
        "never what it computes.\n\n"
        "| key | type | default | allowed | read when | doc |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows(fields):
        doc = r["doc"] + (f" *({r['notes']})*" if r["notes"] else "")
        lines.append(f"| `{r['key']}` | {_cell(r['type'])} | `{_cell(r['default'])}` | {_cell(r['allowed'])} | "
                     f"{_cell(r['read'])} | {_cell(doc)} |")
    return header + "\n".join(lines) + "\n"
