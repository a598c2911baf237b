"""What a run-config field knows about its key, and the tables derived from all of them.

``opt`` and ``sched`` build a field (``dataclasses.field`` with the key's metadata: type, choices,
range, doc, ``read_when``, bookkeeping, inert, params_at_default, path); ``derive`` turns a
``{name: field}`` mapping into the ``Tables`` other modules use (which keys are read only with the
preconditioner, a SAM mode, some models, datasets, optimizers or noise modes; inert and bookkeeping
keys). The fields themselves, one per key, are ``llqr.config.fields.RunConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .schedule_families import default_schedule


class Not:
    """A ``read_when`` condition met by every value except ``values`` (``NOT_NULL``: any but null)."""

    def __init__(self, *values):
        self.values = values

    def __contains__(self, value) -> bool:
        return value not in self.values

    def __eq__(self, other) -> bool:
        return isinstance(other, Not) and other.values == self.values

    def __hash__(self) -> int:
        return hash(("Not", self.values))

    def __repr__(self) -> str:
        return f"Not{self.values!r}"


NOT_NULL = Not(None)


def opt(default, kind: str, *, doc: str, choices=None, minimum=None, maximum=None, gt=None, nullable=False,
        read_when=None, bookkeeping=False, inert=False, params_at_default=True, path=False):
    """A config field with everything known about its key.

    ``read_when``: when a run reads the key, as ``{other_key: allowed values}`` (every entry must
    hold; a tuple of values or a ``Not``), or a tuple of such mappings (any one suffices); None:
    always. Where it does not hold the key cannot change the run: the matrix resets it to the
    preset's value (so it never splits cells), and a key read only for some models, datasets,
    optimizers or noise modes also leaves the rule params of the cells that do not read it.
    ``bookkeeping``: how a run is looked after, never what it computes (not in cell ids, rule params
    or checkpoint keys). ``inert``: accepted for the reference's configs, never changes a run here.
    ``params_at_default=False``: left out of the rule params while at its default (for keys whose
    default is the behaviour cells had before the key existed). ``path``: a location the run reads
    (no '..' component, no shell metacharacters).
    """
    if not doc or not doc.strip():
        raise ValueError("every config field needs a doc")
    meta = dict(kind=kind, choices=choices, minimum=minimum, maximum=maximum, gt=gt, nullable=nullable, doc=doc,
                read_when=_alternatives(read_when), bookkeeping=bookkeeping, inert=inert,
                params_at_default=params_at_default, path=path)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: _fresh(d), metadata=meta)
    return field(default=default, metadata=meta)


def _alternatives(read_when) -> tuple:
    """``read_when`` as a tuple of {key: condition} mappings (empty: always read)."""
    if read_when is None:
        return ()
    alternatives = (read_when,) if isinstance(read_when, dict) else tuple(read_when)
    for alt in alternatives:
        for key, condition in alt.items():
            if not isinstance(condition, (tuple, Not)):
                raise TypeError(f"read_when condition on {key!r} must be a tuple of values or a Not(...)")
    return alternatives


def _fresh(value):
    return default_schedule(value["name"]) if isinstance(value, dict) and "name" in value else type(value)(value)


def sched(name: str, doc: str, read_when=None):
    """A schedule field: a family name or ``{name, <param>: ...}`` (llqr/config/schedule_families.py)."""
    return field(default_factory=lambda: default_schedule(name),
                 metadata=dict(kind="schedule", choices=None, minimum=None, maximum=None, gt=None, nullable=False,
                               doc=doc, read_when=_alternatives(read_when), bookkeeping=False, inert=False,
                               params_at_default=True, path=False))



def field_default(f):
    """A field's default value (a fresh copy for lists and schedules)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default



# Owners whose keys leave the rule params of cells that do not read them (an MLP cell's params hold
# no Transformer width), so adding or retuning such a key re-runs only the cells that read it.
# Keys read only with the preconditioner or a SAM mode are reset to the preset's value instead.
PARAMS_OWNERS = ("model", "dataset", "optimizer", "noise")


def _owned(fields: dict, owner: str) -> dict:
    """{key: the owner's values that read it} for keys read only for some values of ``owner``."""
    out = {}
    for name, f in fields.items():
        alternatives = f.metadata["read_when"]
        if len(alternatives) == 1 and set(alternatives[0]) == {owner}:
            out[name] = alternatives[0][owner]
    return out


def _conditional(fields: dict, owner: str) -> frozenset:
    return frozenset(k for k, f in fields.items() if any(owner in alt for alt in f.metadata["read_when"]))


@dataclass(frozen=True)
class Tables:
    """What other modules need to know about the keys, derived from the fields."""

    precond: frozenset  # read only while the preconditioner is fitted
    sam: frozenset  # read only with a SAM mode
    sam_modes: dict  # SAM keys read only by some modes -> those modes
    inert: frozenset
    bookkeeping: tuple
    owned: dict  # owner (model, dataset, optimizer, noise) -> {key: values that read it}
    conditional: tuple  # every key with a read_when
    read_when: dict  # key -> its read_when alternatives, for the keys in ``conditional``


def derive(fields: dict) -> Tables:
    sam = _conditional(fields, "sam_mode")
    sam_modes = {}
    for k in sam:
        (alt,) = fields[k].metadata["read_when"]
        if not isinstance(alt["sam_mode"], Not):
            sam_modes[k] = alt["sam_mode"]
    return Tables(
        precond=_conditional(fields, "use_preconditioner"),
        sam=sam,
        sam_modes=sam_modes,
        inert=frozenset(k for k, f in fields.items() if f.metadata["inert"]),
        bookkeeping=tuple(k for k, f in fields.items() if f.metadata["bookkeeping"]),
        owned={owner: _owned(fields, owner) for owner in PARAMS_OWNERS},
        conditional=tuple(k for k, f in fields.items() if f.metadata["read_when"]),
        read_when={k: f.metadata["read_when"] for k, f in fields.items() if f.metadata["read_when"]},
    )

