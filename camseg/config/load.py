"""Reading a config: `load_config(path, overrides)` finds the file (or a preset shipped with
camseg), applies `--set` overrides, resolves paths against the file's folder and validates
against the typed tree in camseg.config.schema, turning every failure into one `CamsegError`
line that names the key; `dump_config` writes one back.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from camseg.config.schema import Config
from camseg.errors import CamsegError

# Keys holding paths: values written in a config file are relative to that file's folder.
PATH_KEYS = (
    ("data", "root"),
    ("data", "cache"),
    ("data", "palette"),
    ("model", "weights"),
    ("model", "init_from"),
    ("output", "dir"),
)


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_description(name: str) -> str:
    """A preset's first comment line: what it is for."""
    first = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip()


def find_config(path: Path) -> Path:
    """What --config names: a file at that path, else a preset shipped with camseg (`half`,
    `half.yaml`, ...), so the presets work from any folder and after a plain pip install."""
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    raise CamsegError(
        f"config file not found: {path}; give a YAML file or a preset: {', '.join(preset_names())}"
    )


def is_preset(path: Path) -> bool:
    return path.resolve().parent == PRESETS.resolve()


def load_config(path: Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply `key=value` overrides, validate.

    Relative paths in a config file are relative to that file's folder, except in a preset,
    where they are relative to the current folder (where data/ and runs/ are, not inside the
    installed package). Paths given in overrides are relative to the current folder.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = find_config(path)
        raw = read_yaml(path)
        source = str(path)
        _resolve_paths(raw, Path.cwd() if is_preset(path) else path.parent)
    keys = [_apply_override(raw, item) for item in overrides]
    _expand_user(raw)
    return validate_config(raw, source, keys)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping with safe_load; every failure becomes a one-line CamsegError."""
    if not path.is_file():
        raise CamsegError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise CamsegError(
            f"{path}:{line}: YAML tag refused ({e.problem}); config files hold plain data only"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CamsegError(f"{path}:{line}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise CamsegError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        raise CamsegError(f"{path}: config file is empty; give at least one section, e.g. data:")
    if not isinstance(data, dict):
        raise CamsegError(f"{path}: expected a mapping of sections (data, model, train, output)")
    return data


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for section, key in PATH_KEYS:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = _expanded(sec[key], f"{section}.{key}")
            sec[key] = str(p if p.is_absolute() else (base.absolute() / p))


def _expand_user(raw: dict[str, Any]) -> None:
    """~ in a path given with --set means the home folder, as it does in a config file."""
    for section, key in PATH_KEYS:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            sec[key] = str(_expanded(sec[key], f"{section}.{key}"))


def _expanded(text: str, key: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~name of no such user, or no home folder at all
        raise CamsegError(f"{key} = {text!r}: cannot expand ~ here; write the full path") from None


def absolute_paths(cfg: Config) -> Config:
    """The same config with every path absolute (what a run folder stores, so that resuming
    from another working folder reads the same files)."""
    updates: dict[str, dict[str, Path]] = {}
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if isinstance(value, Path) and not value.is_absolute():
            updates.setdefault(section, {})[key] = value.absolute()
    return cfg.model_copy(
        update={s: getattr(cfg, s).model_copy(update=u) for s, u in updates.items()}
    )


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for dotted in key.split("."):
        pos = 0
        while pos < len(dotted):
            m = _TOKEN.match(dotted, pos)
            if m is None:
                if dotted[pos:].isdigit():
                    parts.append(int(dotted[pos:]))
                    break
                raise CamsegError(f"--set {key}: cannot read the key; write it as a.b=value")
            parts.append(m.group(1) if m.group(1) else int(m.group(2)))
            pos = m.end()
    if not parts:
        raise CamsegError(f"--set {key}: empty key; write it as a.b=value")
    return parts


def _apply_override(raw: dict[str, Any], item: str) -> list[str | int]:
    """Put one `key=value` into the raw mapping; returns the key's parts."""
    if "=" not in item:
        raise CamsegError(f"--set {item}: expected key=value, e.g. data.batch_size=4")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise CamsegError(f"--set {key}: cannot parse value {text!r} as YAML") from None
    parts = _parse_key(key.strip())
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise CamsegError(f"--set {key}: index [{part}] does not exist")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise CamsegError(f"--set {key}: {_dotted(parts[:i])} is not a section")
        if part not in node or node[part] is None:
            node[part] = _default_at(parts[: i + 1]) if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise CamsegError(f"--set {key}: index [{last}] does not exist")
    elif not isinstance(node, dict):
        raise CamsegError(f"--set {key}: {_dotted(parts[:-1])} is not a section")
    node[last] = value
    return parts


def _default_at(parts: list[str | int]) -> Any:
    node: Any = Config().model_dump(mode="json")
    for part in parts:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node


def _dotted(loc: typing.Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _model_at(loc: typing.Sequence[str | int]) -> tuple[type[BaseModel] | None, int]:
    """Walk the schema along loc; return the innermost model and how many loc parts are real."""
    cls: type[BaseModel] = Config
    used = 0
    for part in loc:
        if isinstance(part, int):
            used += 1
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return cls, used
        used += 1
        sub = _submodel(field.annotation)
        if sub is None:
            return None, used
        cls = sub
    return cls, used


def _submodel(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _field_description(loc: typing.Sequence[str | int]) -> str:
    parent, _ = _model_at(loc[:-1])
    name = loc[-1] if loc else None
    if parent is None or not isinstance(name, str) or name not in parent.model_fields:
        return ""
    field = parent.model_fields[name]
    desc = field.description
    if desc is None:
        for meta in typing.get_args(field.annotation)[1:] if field.annotation else ():
            desc = getattr(meta, "description", None) or desc
    return desc or ""


def validate_config(
    raw: dict[str, Any],
    source: str = "config",
    overridden: typing.Sequence[typing.Sequence[str | int]] = (),
) -> Config:
    """Validate a raw mapping; the first problem becomes a one-line CamsegError, named after
    the `--set` that put the bad value there (the last one that did), else `source`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        blamed = _blamed_override(e, overridden)
        where = f"--set {_dotted(blamed)}" if blamed else source
        raise CamsegError(f"{where}: {_describe(e)}") from None


def _blamed_override(
    e: ValidationError, overridden: typing.Sequence[typing.Sequence[str | int]]
) -> typing.Sequence[str | int] | None:
    """The `--set` key behind a validation error: one that set the bad value or a section above
    it; for a rule across a section's keys (fp16 with bf16), one that set a key the rule's
    message names. None when the value came from the file (or the defaults)."""
    err = e.errors()[0]
    loc = tuple(err["loc"])
    for parts in reversed(overridden):
        if len(parts) <= len(loc) and tuple(parts) == loc[: len(parts)]:
            return parts
        below = len(loc) < len(parts) and tuple(parts)[: len(loc)] == loc
        if below and len(loc) and str(parts[len(loc)]) in err["msg"]:
            return parts
    return None


def did_you_mean(name: str, valid: typing.Sequence[str], prefix: str) -> str:
    """The hint after an unknown key under `prefix`: the nearest valid one, else all of them."""
    guess = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if guess:
        return f"did you mean {prefix + '.' if prefix else ''}{guess[0]}?"
    return f"valid keys{' of ' + prefix if prefix else ''}: {', '.join(valid)}"


def _describe(e: ValidationError) -> str:
    errors = e.errors()
    err = errors[0]
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden":
        parent, _ = _model_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent is not None else []
        return f"unknown key {_dotted(loc)}; {did_you_mean(str(loc[-1]), valid, _dotted(loc[:-1]))}"
    _, used = _model_at(loc)
    loc = loc[:used]
    key = _dotted(loc) or "config"
    same = [x for x in errors if list(x["loc"])[:used] == loc]
    msg = err["msg"].removeprefix("Value error, ")
    if len(same) > 1:
        msg = next(
            (x["msg"].removeprefix("Value error, ") for x in same if x["type"] == "value_error"),
            "not one of the allowed kinds",
        )
    value = err.get("input")
    desc = _field_description(loc)
    if isinstance(value, dict) and err["type"] == "value_error":
        return f"{key}: {msg}"  # a rule across a section's keys: its message names them
    shown = "missing" if err["type"] == "missing" else _short_repr(value)
    line = f"{key} = {shown} is not valid: {msg}"
    return f"{line}. Allowed: {desc}" if desc and desc not in line else line


def _short_repr(value: Any) -> str:
    """A value as a message shows it: a few items a level, a few levels, at most 100 characters
    (a YAML alias bomb's value is billions of items once expanded; this never expands it)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict = 3, 4, 4, 4
    short.maxstring, short.maxother = 60, 60
    text = short.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (what `config show` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
