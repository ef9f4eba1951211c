"""Skills and roles: the `Skill` model, the SKILL.md loader and the `SkillRegistry`.

A skill is either a *role* (it answers the user: its instructions are the system prompt) or a
*tools* skill (its tools and instructions are added to whichever roles run). Skills come from
three places: SKILL.md folders shipped in the repository's `skills/` folder, SKILL.md folders the
user drops into `<data_dir>/skills/`, and Python skills registered at mount time (the ComfyUI tools).

A folder holding a `SKILL.md` in the Agent Skills format loads unchanged: YAML front matter with
`name` and `description` (optional `license`, `compatibility`, `allowed-tools`, `metadata`), then
markdown instructions. Opencode reads a few optional `metadata` keys of its own: `opencode-kind`
(`role` | `tools`), `opencode-engine` (`llm` | `echo`), `opencode-color` (`#rrggbb`),
`opencode-title` (display name) and `version`. Files beside SKILL.md (its `references/`) are listed
in the skill's instructions, and the model reads them on demand through the `read_skill_reference`
tool: only listed files, only of the skills its reply runs with, never outside the skill's folder.

Imports protocol, tools and errors only: never ComfyUI, torch, or anything from `skills/`.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import NotFound
from .protocol import SkillInfo, SkillToolInfo
from .tools import Tool, ToolContext, ToolError, tool

log = logging.getLogger("opencode.skills")

SkillKind = Literal["role", "tools"]
SkillEngine = Literal["llm", "echo"]
SkillOrigin = Literal["builtin", "user", "python"]

# The repository's own `skills/` folder, found by path (core never imports it).
BUILTIN_SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"
DEFAULT_ROLE = "assistant"

# Limits from the Agent Skills specification, plus our own size caps.
NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 1024
MAX_COMPATIBILITY_CHARS = 500
MAX_SKILL_FILE_BYTES = 256 * 1024
MAX_REFERENCES = 200
MAX_REFERENCE_READ_CHARS = 48_000  # a page
MAX_REFERENCE_FILE_CHARS = 1_000_000  # read of a file at most, in pages
SKILL_FILE = "SKILL.md"
REFERENCES_DIR = "references"
KNOWN_FIELDS = frozenset({"name", "description", "license", "compatibility", "allowed-tools", "metadata"})
COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
# Label colours for skills that do not pick one: readable on light and dark panels.
PALETTE = ("#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#dc2626", "#65a30d", "#9333ea", "#0d9488")


@dataclass
class Skill:
    """One skill: a role that answers, or a bundle of tools and instructions added to roles."""

    id: str
    name: str
    description: str
    kind: SkillKind = "tools"
    instructions: str = ""
    tools: list[Tool] = field(default_factory=list)
    engine: SkillEngine = "llm"
    version: str = "1.0"
    source: Path | None = None  # the skill's folder, for SKILL.md skills
    references: list[str] = field(default_factory=list)  # paths relative to `source`, posix style
    color: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    compatibility: str | None = None
    allowed_tools: list[str] = field(default_factory=list)
    origin: SkillOrigin = "python"

    def __post_init__(self) -> None:
        if not COLOR_RE.match(self.color):
            self.color = default_color(self.id)

    def info(self) -> SkillInfo:
        return SkillInfo(
            id=self.id,
            name=self.name,
            description=self.description,
            version=self.version,
            kind=self.kind,
            engine=self.engine,
            color=self.color,
            origin=self.origin,
            license=self.license,
            compatibility=self.compatibility,
            allowed_tools=list(self.allowed_tools),
            tools=[
                SkillToolInfo(name=t.name, description=t.description, permission=t.permission, parameters=t.json_schema())
                for t in self.tools
            ],
            references=list(self.references),
        )


class SkillLoadError(Exception):
    """A skill folder that cannot be loaded; the registry logs it and loads the others."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"skill folder {folder}: {reason}")
        self.folder = folder
        self.reason = reason


def default_color(skill_id: str) -> str:
    """A stable colour per id (crc32, since `hash()` changes between processes)."""
    return PALETTE[zlib.crc32(skill_id.encode()) % len(PALETTE)]


def references_note(skill_id: str, references: list[str]) -> str:
    """The part of a skill's instructions that tells the model which reference files it may read."""
    if not references:
        return ""
    listing = "\n".join(f"- {p}" for p in references)
    return (
        f"Reference files of the `{skill_id}` skill (read one with "
        f'`read_skill_reference(skill="{skill_id}", path=...)` when you need it):\n{listing}'
    )


def title_from_id(skill_id: str) -> str:
    return " ".join(w.capitalize() for w in re.split(r"[-_]", skill_id) if w)


# --------------------------------------------------------------------------- SKILL.md loader

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def parse_skill_md(text: str) -> tuple[dict[str, Any], str]:
    """Split a SKILL.md into its YAML front matter (a mapping) and its markdown body."""
    text = text.lstrip("\ufeff")
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise ValueError("SKILL.md must start with YAML front matter between '---' lines")
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"front matter is not valid YAML{where}: {problem}") from None
    if not isinstance(front, dict):
        raise ValueError("front matter must be a YAML mapping")
    return front, text[match.end():]


def _optional_text(front: dict[str, Any], key: str, limit: int | None = None) -> str | None:
    value = front.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"'{key}' must be text")
    text = str(value).strip()
    if limit is not None and len(text) > limit:
        raise ValueError(f"'{key}' is {len(text)} characters, the limit is {limit}")
    return text or None


def _metadata(front: dict[str, Any]) -> dict[str, str]:
    raw = front.get("metadata")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("'metadata' must be a mapping of keys to text values")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, (dict, list)):
            raise ValueError(f"metadata '{key}' must be a text value, not a {type(value).__name__}")
        out[str(key)] = "" if value is None else str(value)
    return out


def _allowed_tools(front: dict[str, Any]) -> list[str]:
    raw = front.get("allowed-tools")
    if raw is None:
        return []
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)  # a YAML list is not the spec's form, but common enough to accept
    raise ValueError("'allowed-tools' must be a space-separated list of tool names")


def list_references(folder: Path) -> list[str]:
    """Files the model may read: everything under `references/`, and markdown beside SKILL.md."""
    found: list[str] = []
    ref_dir = folder / REFERENCES_DIR
    if ref_dir.is_dir():
        for path in sorted(ref_dir.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
                found.append(path.relative_to(folder).as_posix())
    for path in sorted(folder.glob("*.md")):
        if path.is_file() and path.name != SKILL_FILE and not path.name.startswith("."):
            found.append(path.name)
    return found[:MAX_REFERENCES]


def load_skill_folder(folder: Path, origin: SkillOrigin = "user") -> Skill:
    """Load one SKILL.md folder (blocking file IO: call it off the event loop)."""
    skill_file = folder / SKILL_FILE
    try:
        size = skill_file.stat().st_size
        if size > MAX_SKILL_FILE_BYTES:
            raise SkillLoadError(folder, f"{SKILL_FILE} is {size} bytes, the limit is {MAX_SKILL_FILE_BYTES}")
        text = skill_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SkillLoadError(folder, f"{SKILL_FILE} is not UTF-8 text") from None
    except OSError as exc:
        raise SkillLoadError(folder, f"cannot read {SKILL_FILE}: {exc.strerror or exc}") from None
    try:
        front, body = parse_skill_md(text)
        skill = _skill_from_front_matter(folder, front, body, origin)
    except ValueError as exc:
        raise SkillLoadError(folder, str(exc)) from None
    unknown = sorted(set(map(str, front)) - KNOWN_FIELDS)
    if unknown:
        log.warning("skill %s: ignoring unknown front matter fields %s", skill.id, ", ".join(unknown))
    return skill


def _skill_from_front_matter(folder: Path, front: dict[str, Any], body: str, origin: SkillOrigin) -> Skill:
    name = front.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("front matter needs a 'name'")
    if len(name) > MAX_NAME_CHARS or not NAME_RE.match(name):
        raise ValueError(
            f"name '{name}' must be 1-{MAX_NAME_CHARS} lowercase letters, digits and single hyphens, "
            "not starting or ending with a hyphen"
        )
    if name != folder.name:
        raise ValueError(f"name '{name}' must match the folder name '{folder.name}'")
    description = _optional_text(front, "description", MAX_DESCRIPTION_CHARS)
    if not description:
        raise ValueError("front matter needs a non-empty 'description'")
    metadata = _metadata(front)
    kind = metadata.get("opencode-kind", "tools")
    if kind not in ("role", "tools"):
        raise ValueError(f"metadata opencode-kind must be 'role' or 'tools', not '{kind}'")
    engine = metadata.get("opencode-engine", "llm")
    if engine not in ("llm", "echo"):
        raise ValueError(f"metadata opencode-engine must be 'llm' or 'echo', not '{engine}'")
    color = metadata.get("opencode-color", "")
    if color and not COLOR_RE.match(color):
        log.warning("skill %s: ignoring opencode-color %r (expected #rrggbb)", name, color)
    references = list_references(folder)
    instructions = "\n\n".join(p for p in (body.strip(), references_note(name, references)) if p)
    return Skill(
        id=name,
        name=metadata.get("opencode-title") or title_from_id(name),
        description=description,
        kind=kind,  # type: ignore[arg-type]
        instructions=instructions,
        engine=engine,  # type: ignore[arg-type]
        version=metadata.get("version", "1.0"),
        source=folder.resolve(),
        references=references,
        color=color,
        metadata=metadata,
        license=_optional_text(front, "license"),
        compatibility=_optional_text(front, "compatibility", MAX_COMPATIBILITY_CHARS),
        allowed_tools=_allowed_tools(front),
        origin=origin,
    )


def read_reference_text(skill: Skill, path: str, offset: int = 0) -> str:
    """A page of one of a skill's listed reference files (blocking), from `offset`.

    Why only listed files: a skill folder the user cloned may hold `.env`, `.git/config` or any
    other file, and what this returns goes to the model's provider. The list (made at load,
    dotfiles left out) is what the skill's instructions name; a listed symlink that leads out of
    the folder is still refused. At most `MAX_REFERENCE_FILE_CHARS` of a file are read.
    """
    readable = ", ".join(skill.references) or "none"
    if skill.source is None:
        raise ToolError(f"skill '{skill.id}' has no reference files")
    if not path or "\x00" in path:
        raise ToolError("give the path of a reference file, e.g. references/guide.md")
    name = reference_path(path)
    root = skill.source.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ToolError(f"'{path}' is outside the skill's folder; list of readable files: {readable}")
    if name not in skill.references:
        raise ToolError(f"no file '{path}' among the reference files of skill '{skill.id}', "
                        f"the only files it can read: {readable}")
    if not target.is_file():
        raise ToolError(f"no file '{path}' in skill '{skill.id}'; readable files: {readable}")
    try:
        with target.open(encoding="utf-8") as f:
            text = f.read(MAX_REFERENCE_FILE_CHARS + 1)
    except UnicodeDecodeError:
        raise ToolError(f"'{path}' is not a text file") from None
    return _page(text, offset)


def reference_path(path: str) -> str:
    """`path` spelt the way `Skill.references` are: `/` between parts, no `.` or `..` parts."""
    return posixpath.normpath(path.replace("\\", "/"))


def _page(text: str, offset: int) -> str:
    """The page of `text` from `offset`, saying where it is when the text does not fit in one;
    text past `MAX_REFERENCE_FILE_CHARS` (read one character beyond, to know) is left out."""
    cut = len(text) > MAX_REFERENCE_FILE_CHARS
    text = text[:MAX_REFERENCE_FILE_CHARS]
    total = len(text)
    offset = max(0, offset)
    chunk = text[offset : offset + MAX_REFERENCE_READ_CHARS]
    end = offset + len(chunk)
    if offset == 0 and end >= total and not cut:
        return chunk
    more = f" Call again with offset={end} for more." if end < total else ""
    of = f"the first {total} (the file is longer; the rest cannot be read)" if cut else str(total)
    return f"{chunk}\n\n[characters {offset}-{end} of {of}.{more}]"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SkillProblem:
    """A skill folder that was skipped, and why (shown by `POST /opencode/skills/reload`)."""

    folder: str
    reason: str


class SkillRegistry:
    """Every skill Opencode knows: folder skills (built-in, then the user's) and Python skills.

    Folders are scanned by `await reload()` (call it once at start). A user skill with the id of a
    built-in one replaces it; a Python skill registered with `register()` wins over both.
    """

    def __init__(self, builtin_dir: Path | None = BUILTIN_SKILLS_DIR, user_dir: Path | None = None) -> None:
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self._python: dict[str, Skill] = {}
        self._folder_skills: dict[str, Skill] = {}
        self._problems: list[SkillProblem] = []
        self._lock = asyncio.Lock()
        self._reference_tool = _make_reference_tool(self)

    # ---- loading

    def register(self, skill: Skill, *, replace: bool = False) -> None:
        """Add a Python skill (e.g. the ComfyUI tools) at mount time; it survives `reload()`."""
        if skill.id in self._python and not replace:
            raise ValueError(f"skill '{skill.id}' is already registered")
        if skill.id in self._folder_skills:
            log.warning("skill %s: the registered Python skill replaces the folder skill of the same id", skill.id)
        self._python[skill.id] = skill

    def unregister(self, skill_id: str) -> None:
        self._python.pop(skill_id, None)

    async def reload(self) -> list[SkillProblem]:
        """Rescan the skill folders (off the event loop); returns the folders that were skipped."""
        async with self._lock:
            skills, problems = await asyncio.to_thread(self._scan)
            self._folder_skills = skills
            self._problems = problems
        log.info("skills loaded: %s", ", ".join(s.id for s in self.list()) or "none")
        return list(problems)

    def _scan(self) -> tuple[dict[str, Skill], list[SkillProblem]]:
        skills: dict[str, Skill] = {}
        problems: list[SkillProblem] = []
        sources: list[tuple[Path | None, SkillOrigin]] = [(self.builtin_dir, "builtin"), (self.user_dir, "user")]
        for base, origin in sources:
            if base is None or not base.is_dir():
                continue
            for folder in sorted(p for p in base.iterdir() if p.is_dir()):
                if folder.name.startswith((".", "_")) or not (folder / SKILL_FILE).is_file():
                    continue
                try:
                    skill = load_skill_folder(folder, origin)
                except SkillLoadError as exc:
                    log.warning("skipping skill folder %s: %s", folder, exc.reason)
                    problems.append(SkillProblem(folder=str(folder), reason=exc.reason))
                    continue
                if skill.id in self._python:
                    log.warning("skill folder %s is hidden by the registered Python skill '%s'", folder, skill.id)
                if skill.id in skills:
                    log.info("skill %s from %s replaces the %s one", skill.id, folder, skills[skill.id].origin)
                skills[skill.id] = skill
        return skills, problems

    # ---- lookup

    def get(self, skill_id: str) -> Skill | None:
        return self._python.get(skill_id) or self._folder_skills.get(skill_id)

    def require(self, skill_id: str) -> Skill:
        skill = self.get(skill_id)
        if skill is None:
            known = ", ".join(s.id for s in self.list()) or "none"
            raise NotFound(f"no skill '{skill_id}' (known skills: {known})", code="skill_not_found")
        return skill

    def list(self) -> list[Skill]:
        """Roles first (the default role leading), then tool skills, each group by id."""
        merged = {**self._folder_skills, **self._python}
        return sorted(merged.values(), key=lambda s: (s.kind != "role", s.id != DEFAULT_ROLE, s.id))

    def roles(self) -> list[Skill]:
        return [s for s in self.list() if s.kind == "role"]

    def tool_skills(self) -> list[Skill]:
        return [s for s in self.list() if s.kind == "tools"]

    def default_role(self) -> Skill | None:
        roles = self.roles()
        return roles[0] if roles else None

    @property
    def problems(self) -> list[SkillProblem]:
        return list(self._problems)

    # ---- what a run gets

    @property
    def reference_tool(self) -> Tool:
        """`read_skill_reference(skill, path, offset=0)`: reads a file inside a skill's folder."""
        return self._reference_tool

    def tools_for(self, skills: list[Skill]) -> list[Tool]:
        """The tools of these skills (first name wins), plus `read_skill_reference` when any has references."""
        tools: dict[str, Tool] = {}
        for skill in skills:
            for t in skill.tools:
                tools.setdefault(t.name, t)
        if any(s.references for s in skills):
            tools.setdefault(self._reference_tool.name, self._reference_tool)
        return list(tools.values())

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able descriptions for `GET /opencode/skills`."""
        return [s.info().model_dump(mode="json") for s in self.list()]


def _make_reference_tool(registry: SkillRegistry) -> Tool:
    @tool(permission="read")
    async def read_skill_reference(ctx: ToolContext, skill: str, path: str, offset: int = 0) -> str:
        """Read a reference file of a skill (a path listed in that skill's instructions, e.g.
        `references/guide.md`). Long files come in pieces: pass `offset` to continue."""
        # Only the skills of this reply: their instructions are the ones that list the files.
        found = registry.get(skill) if skill in ctx.run_skills else None
        if found is None:
            with_refs = [s for s in map(registry.get, ctx.run_skills) if s is not None and s.references]
            raise ToolError(f"no skill '{skill}' among this reply's skills; skills with references: "
                            + (", ".join(s.id for s in with_refs) or "none"))
        return await asyncio.to_thread(read_reference_text, found, path, offset)

    return read_skill_reference
