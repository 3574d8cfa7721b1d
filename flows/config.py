"""Run configuration: YAML files plus `--set section.key=value` overrides, validated up front.

A run config is one dataclass per stage, under a section name. Values are type-checked against the
dataclass fields and each stage dataclass validates itself, so bad settings stop before any work.
A section may name a preset (`world: {preset: tiny}`), a classmethod of its dataclass.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csr_core.config import WORLD, EvalConfig, ModelConfig, PromptConfig, RelevanceConfig, RuntimeConfig
from csr_core.keys import plain_data
from csr_core.reward import RewardConfig
from csr_core.tree import SearchConfig
from csr_core.validation import ConfigError, require
from training.dpo_config import DPOConfig
from world.config import WorldConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

SECTIONS: dict[str, type] = {
    "world": WorldConfig,
    "prompts": PromptConfig,
    "model": ModelConfig,
    "search": SearchConfig,
    "relevance": RelevanceConfig,
    "reward": RewardConfig,
    "dpo": DPOConfig,
    "eval": EvalConfig,
    "runtime": RuntimeConfig,
}
TOP_LEVEL = {"data_dir": str, "db": str, "rounds": int}


@dataclass(frozen=True)
class RunConfig:
    data_dir: str = "./csr_data"
    db: str = "./csr.duckdb"
    rounds: int = 1
    world: WorldConfig = field(default_factory=WorldConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    relevance: RelevanceConfig = field(default_factory=RelevanceConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        require(self.rounds >= 0, "rounds", f"must be >= 0, got {self.rounds}")

    @property
    def world_dir(self) -> Path:
        return Path(self.data_dir) / "world"

    @property
    def uses_world(self) -> bool:
        return WORLD in (self.prompts.source, self.model.path, self.relevance.model_dir, self.eval.source)


def load_config(files: list[str | Path] = (), overrides: list[str] = (), *, base: str = "default") -> RunConfig:
    """Merge `configs/<base>.yaml`, then `files`, then `--set` overrides; validate everything."""
    raw: dict[str, Any] = {}
    for path in [CONFIG_DIR / f"{base}.yaml", *files]:
        _deep_merge(raw, read_yaml(Path(path)))
    for item in overrides:
        _apply_override(raw, item)
    return build_config(raw)


def given_or_loaded(config: RunConfig | None, files: list[str] | None, overrides: list[str] | None) -> RunConfig:
    """A flow's config: the one the caller validated (the CLI), else loaded from files and overrides."""
    return config if config is not None else load_config(files or [], overrides or [])


def check_lams(cfg: RunConfig, lams) -> None:
    """Each λ a valid `reward.lam` (`reward.lam: why`), before any work."""
    for lam in lams:
        try:
            dataclasses.replace(cfg.reward, lam=float(lam))
        except ConfigError as exc:
            raise exc.within("reward") from None


def build_config(raw: dict[str, Any]) -> RunConfig:
    unknown = set(raw) - set(SECTIONS) - set(TOP_LEVEL)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join([*TOP_LEVEL, *SECTIONS])})")
    kwargs: dict[str, Any] = {}
    for name, kind in TOP_LEVEL.items():
        if name in raw:
            kwargs[name] = _coerce(name, raw[name], kind)
    for name, cls in SECTIONS.items():
        kwargs[name] = _build_section(name, cls, dict(raw.get(name) or {}))
    return RunConfig(**kwargs)


def config_dict(config: Any) -> dict[str, Any]:
    """A run or stage config as plain JSON-able data (what gets stored beside artifacts)."""
    return typing.cast(dict, plain_data(config))


def _build_section(name: str, cls: type, values: dict[str, Any]):
    preset = values.pop("preset", None)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise ConfigError(name, f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(fields))})")
    typed = {key: _coerce(f"{name}.{key}", value, hints[key]) for key, value in values.items()}
    factory = cls if preset is None else getattr(cls, str(preset), None)
    if not callable(factory) or str(preset).startswith("_"):
        raise ConfigError(f"{name}.preset", f"unknown preset {preset!r}")
    try:
        return dataclasses.replace(factory(), **typed) if preset is not None else cls(**typed)
    except ConfigError as exc:
        raise exc.within(name) from None


def _coerce(name: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_kind, *_rest) = typing.get_args(kind) or (Any,)
        return tuple(_coerce(name, v, item_kind) for v in value)
    if origin is dict:  # e.g. eval.pope_files: {random: FILE, ...}
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a mapping such as {{key: value}}, got {value!r}")
        key_kind, value_kind = typing.get_args(kind) or (Any, Any)
        return {_coerce(name, k, key_kind): _coerce(f"{name}.{k}", v, value_kind) for k, v in value.items()}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        return _coerce(name, value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float) and isinstance(value, str):
        value = _number(value, kind, name)  # YAML 1.1 reads "3e-4" as a string
    is_bool_for_int = kind is int and isinstance(value, bool)
    if kind in (int, float, str, bool) and (not isinstance(value, kind) or is_bool_for_int):
        raise ConfigError(name, f"must be of type {kind.__name__}, got {value!r}")
    return value


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(name, f"must be of type {kind.__name__}, got {text!r}") from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key.strip(), f"--set value {text!r} is not valid YAML ({_yaml_problem(exc)})") from None
    parts = key.strip().split(".")
    if len(parts) == 1:
        if parts[0] not in TOP_LEVEL:
            raise ValueError(f"unknown config key {key!r} (sections need section.key, e.g. reward.lam=0.5)")
        raw[parts[0]] = value
    elif len(parts) == 2:
        if parts[0] not in SECTIONS:
            raise ValueError(f"unknown config section {parts[0]!r} in --set {item!r}")
        section = raw.setdefault(parts[0], {}) or {}
        raw[parts[0]] = section
        section[parts[1]] = value
    else:
        raise ValueError(f"--set key must be 'key' or 'section.key', got {key!r}")


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return data


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or type(exc).__name__}{where}"


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value

