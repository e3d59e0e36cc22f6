"""Writes ``docs/configuration.md``: every key of a run, from the one config model.

``python -m pollinate.simulations.config_reference > docs/configuration.md``

Each key of :class:`~pollinate.shared.config.FederationConfig` gets a row: its name (the
same in a run file, in ``[tool.flwr.app.config]`` and, with ``--``, on the command line),
its values, its default, whether ``pollinate simulate --help`` shows it (common) or keeps
it for run files (research), and what it does, from the ``#:`` comment above the field
and the CLI's help text.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

from pydantic_core import PydanticUndefined

from pollinate.shared.config import TASK_DEFAULTS, FederationConfig

HEADER = """# Configuration reference

Every key of a federated run. The same names work

- in a **run file** (`pollinate simulate --config run.toml`, TOML, one `key = value` a line;
  an optional `[about]` table is free text and an optional `[columns]` table maps your
  file's columns),
- in a **recipe** (`pollinate simulate --recipe ml-100k/rating/user-dp`; `pollinate recipes`
  lists them; they are run files shipped in `pollinate.simulations.recipes`),
- in Flower's `[tool.flwr.app.config]` of `pyproject.toml` (for `flwr run`),
- and as **flags** of `pollinate simulate` (`--sample-rate 0.2`; `true`/`false` keys are
  `--key/--no-key`).

Precedence: recipe, then run file, then flags. Unknown keys are refused with the list of
known ones, and every value is checked once by one model,
`pollinate.shared.config.FederationConfig`, before anything runs; impossible combinations
(say `--dp local` with a loss Opacus cannot clip) are refused with the reason and the fix.
The resolved configuration is written to the run's `config.json`. Relative paths in a run
file (`dataset`, `out`) are read from the directory you run the command in, as on the
command line.

**common** keys are listed by `pollinate simulate --help`; **research** keys are the knobs
of the measurements in `simulations/benchmarks/RESULTS.md`: their flags still work but are
not listed. "by task and model" defaults come from `TASK_DEFAULTS` (table at the end).

This page is generated: `python -m pollinate.simulations.config_reference >
docs/configuration.md` (a test checks that it names every key).

## Running with `flwr run`

The repository root is also a Flower App (`[tool.flwr.app]` in `pyproject.toml`, whose
`[tool.flwr.app.config]` holds these keys). On a machine without internet, disable Flower's
runtime dependency installation, and give the federation one SuperNode per user:

```bash
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
flwr run . --run-config "rounds=20 sample-rate=0.5" --federation-config "num-supernodes=200"
```

Under `flwr run` devices keep their private parameters in Flower's node state;
`pollinate simulate` keeps them on (simulated) disk under the run directory, which makes
`--resume` exact, and gives each simulated device its privacy policy.
"""


def _field_comments() -> tuple[dict[str, str], dict[str, str]]:
    """The ``#:`` comment above each field, and the ``# Section`` each field falls under."""
    comments: dict[str, str] = {}
    sections: dict[str, str] = {}
    pending: list[str] = []
    section = "Data"
    for line in inspect.getsource(FederationConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        if stripped.startswith("# ") and line.startswith("    # "):
            section = stripped[2:].split("(")[0].strip()
            pending = []
            continue
        match = re.match(r"^    (\w+): ", line)
        if match and match.group(1) in FederationConfig.model_fields:
            comments[match.group(1)] = " ".join(pending)
            sections[match.group(1)] = section
        pending = []
    return comments, sections


def _cli_help() -> dict[str, tuple[str, bool]]:
    """Each ``pollinate simulate`` option's help text and whether --help hides it."""
    import typer.main

    from pollinate.simulations.cli import app

    group: Any = typer.main.get_command(app)
    command = group.commands["simulate"]
    return {
        str(p.name): (str(getattr(p, "help", "") or ""), bool(getattr(p, "hidden", False)))
        for p in command.params
    }


def _values(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if args:
        parts = [_values(a) for a in args]
        return " or ".join(p for p in parts if p)
    if annotation is type(None):
        return "unset"
    return getattr(annotation, "__name__", str(annotation))


def _default(name: str, field: Any) -> str:
    if field.default is PydanticUndefined:
        return "by task and model"
    if field.default is None:
        return "unset"
    return f"`{field.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole reference page."""
    comments, sections = _field_comments()
    cli = _cli_help()
    out = [HEADER]
    current = None
    for name, field in FederationConfig.model_fields.items():
        section = sections.get(name, "Other")
        if section != current:
            out += [f"\n## {section}\n", "| key | values | default | | what it does |",
                    "|---|---|---|---|---|"]  # fmt: skip
            current = section
        help_text, hidden = cli.get(name, ("", True))
        kind = "research" if hidden or name not in cli else "common"
        if name not in cli:
            kind = "run file only"
        text = " ".join(t for t in (help_text.rstrip(".") + "." if help_text else "",
                                    comments.get(name, "")) if t)  # fmt: skip
        key = name.replace("_", "-")
        out.append(
            f"| `{key}` | {_values(field.annotation)} | {_default(name, field)} | {kind} | "
            f"{_cell(text) or '-'} |"
        )
    out += ["\n## Defaults by task and model (`TASK_DEFAULTS`)\n",
            "| task, model | " + " | ".join(f"`{k}`" for k in TASK_DEFAULTS[("rating", "mf")])
            + " |", "|---" * (1 + len(TASK_DEFAULTS[("rating", "mf")])) + "|"]  # fmt: skip
    keys = list(TASK_DEFAULTS[("rating", "mf")])
    for (task, model), values in TASK_DEFAULTS.items():
        out.append(
            f"| {task}, {model} | " + " | ".join(str(values.get(k, "-")) for k in keys) + " |"
        )
    out.append(
        "\nUnder `--dp local`/`both` the ranking loss is `sampled_softmax` (Opacus must clip "
        "each example) and `private-refit` is off; `private-refit` is on for `mf` ratings "
        "otherwise. `lr-encoder` (interest) is 0.0025 by default.\n"
    )
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
