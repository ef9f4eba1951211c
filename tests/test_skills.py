"""The skill model, the SKILL.md loader and the registry, on real folders (built-in and fixtures)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from opencode_agent.core.errors import NotFound
from opencode_agent.core.protocol import SkillInfo
from opencode_agent.core.skills import (
    BUILTIN_SKILLS_DIR,
    MAX_REFERENCE_FILE_CHARS,
    MAX_REFERENCE_READ_CHARS,
    PALETTE,
    Skill,
    SkillRegistry,
    load_skill_folder,
    parse_skill_md,
)
from opencode_agent.core.tools import ToolContext, tool
from opencode_agent.tests.fakes.tool_context import FakeToolContext

FIXTURES = Path(__file__).parent / "fixtures" / "skills"
BROKEN = {"broken-yaml", "wrong-name", "missing-description", "bad-kind"}


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture skills, as a user's `<data_dir>/skills`."""
    target = tmp_path / "skills"
    shutil.copytree(FIXTURES, target)
    return target


@pytest.fixture
async def registry(user_dir: Path) -> SkillRegistry:
    reg = SkillRegistry(user_dir=user_dir)
    await reg.reload()
    return reg


def make_python_skill(skill_id: str = "py-tools") -> Skill:
    @tool(permission="run")
    async def shout(ctx: ToolContext, text: str, times: int = 1) -> str:
        """Say it louder."""
        return text.upper() * times

    return Skill(id=skill_id, name="Py Tools", description="Python tools.", kind="tools", tools=[shout])


# --------------------------------------------------------------------------- built-in skills


async def test_builtin_skills_load_as_roles_with_assistant_first() -> None:
    reg = SkillRegistry(user_dir=None)
    problems = await reg.reload()
    assert problems == []
    ids = [s.id for s in reg.list()]
    assert {"assistant", "prompt-engineer", "workflow-doctor", "echo"} <= set(ids)
    assert ids[0] == "assistant"
    assert reg.default_role() is reg.get("assistant")
    assert all(s.kind == "role" and s.origin == "builtin" for s in reg.roles())
    echo = reg.require("echo")
    assert echo.engine == "echo"
    assert reg.require("assistant").engine == "llm"
    for skill in reg.list():
        assert skill.instructions.strip(), skill.id
        assert skill.source is not None and skill.source.parent == BUILTIN_SKILLS_DIR


async def test_builtin_references_are_listed_in_the_instructions() -> None:
    reg = SkillRegistry(user_dir=None)
    await reg.reload()
    doctor = reg.require("workflow-doctor")
    assert doctor.references == ["references/common-errors.md"]
    assert 'read_skill_reference(skill="workflow-doctor"' in doctor.instructions
    assert "- references/common-errors.md" in doctor.instructions
    assert reg.require("prompt-engineer").references == ["references/model-families.md"]


def test_comfyui_python_package_is_not_a_folder_skill() -> None:
    assert not (BUILTIN_SKILLS_DIR / "comfyui" / "SKILL.md").exists()


# --------------------------------------------------------------------------- the Agent Skills format


def test_full_skill_md_loads_unchanged_with_every_optional_field() -> None:
    skill = load_skill_folder(FIXTURES / "full-skill", origin="user")
    assert skill.id == "full-skill"
    assert skill.name == "Full Skill"
    assert skill.kind == "tools"  # the default for SKILL.md skills
    assert skill.engine == "llm"
    assert skill.description.startswith("A skill using every optional field")
    assert skill.license == "Apache-2.0"
    assert skill.compatibility == "Needs ComfyUI 0.3 or later and a vision model."
    assert skill.allowed_tools == ["search_nodes", "describe_node", "read_skill_reference"]
    assert skill.metadata == {"author": "opencode-tests", "version": "2.1", "opencode-color": "#123abc"}
    assert skill.version == "2.1"
    assert skill.color == "#123abc"
    assert skill.instructions.startswith("# Full skill\n\nFollow the checklist")
    assert skill.references == [
        "references/binary.png",
        "references/checklist.md",
        "references/nested/deep.md",
        "FORMS.md",
    ]
    assert skill.tools == []


def test_role_kind_from_metadata_and_bad_colour_falls_back_to_palette() -> None:
    skill = load_skill_folder(FIXTURES / "role-skill")
    assert skill.kind == "role"
    assert skill.color in PALETTE
    assert skill.references == []
    assert "read_skill_reference" not in skill.instructions


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("broken-yaml", "not valid YAML"),
        ("wrong-name", "must match the folder name 'wrong-name'"),
        ("missing-description", "needs a non-empty 'description'"),
        ("bad-kind", "opencode-kind must be 'role' or 'tools'"),
    ],
)
def test_broken_skill_folders_say_why(folder: str, reason: str) -> None:
    from opencode_agent.core.skills import SkillLoadError

    with pytest.raises(SkillLoadError) as info:
        load_skill_folder(FIXTURES / folder)
    assert reason in info.value.reason
    assert info.value.folder == FIXTURES / folder


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no front matter", "must start with YAML front matter"),
        ("---\n- a list\n---\n", "must be a YAML mapping"),
    ],
)
def test_parse_skill_md_refuses_malformed_files(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_skill_md(text)


@pytest.mark.parametrize("name", ["Upper", "-lead", "trail-", "dou--ble", "a" * 65, "under_score"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    from opencode_agent.core.skills import SkillLoadError

    folder = tmp_path / name
    folder.mkdir()
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: x\n---\nbody\n")
    with pytest.raises(SkillLoadError, match="lowercase letters"):
        load_skill_folder(folder)


def test_description_over_the_limit_is_refused(tmp_path: Path) -> None:
    from opencode_agent.core.skills import SkillLoadError

    folder = tmp_path / "long"
    folder.mkdir()
    (folder / "SKILL.md").write_text("---\nname: long\ndescription: " + "x" * 1025 + "\n---\n")
    with pytest.raises(SkillLoadError, match="limit is 1024"):
        load_skill_folder(folder)


# --------------------------------------------------------------------------- registry


async def test_broken_skills_are_skipped_with_a_log_line_and_the_others_load(
    user_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = SkillRegistry(user_dir=user_dir)
    with caplog.at_level(logging.WARNING, logger="opencode.skills"):
        problems = await reg.reload()
    assert {Path(p.folder).name for p in problems} == BROKEN
    for name in BROKEN:
        lines = [r.getMessage() for r in caplog.records if f"skipping skill folder {user_dir / name}:" in r.getMessage()]
        assert len(lines) == 1, name
    assert reg.get("full-skill") is not None and reg.get("role-skill") is not None
    assert reg.get("assistant") is not None  # built-ins load too
    assert reg.get("not-a-skill") is None  # no SKILL.md: not a skill, not a problem
    assert reg.problems == problems


async def test_roles_and_tool_skills(registry: SkillRegistry) -> None:
    roles = [s.id for s in registry.roles()]
    assert roles[0] == "assistant"
    assert "role-skill" in roles
    assert [s.id for s in registry.tool_skills()] == ["full-skill"]


async def test_reload_picks_up_new_and_removed_folders(registry: SkillRegistry, user_dir: Path) -> None:
    assert registry.get("fresh") is None
    (user_dir / "fresh").mkdir()
    (user_dir / "fresh" / "SKILL.md").write_text("---\nname: fresh\ndescription: Added while running.\n---\nNew.\n")
    await registry.reload()
    assert registry.require("fresh").instructions == "New."
    shutil.rmtree(user_dir / "fresh")
    await registry.reload()
    assert registry.get("fresh") is None


async def test_user_skill_replaces_builtin_of_same_id(user_dir: Path) -> None:
    (user_dir / "assistant").mkdir()
    (user_dir / "assistant" / "SKILL.md").write_text(
        "---\nname: assistant\ndescription: My own assistant.\nmetadata:\n  opencode-kind: role\n---\nBe terse.\n"
    )
    reg = SkillRegistry(user_dir=user_dir)
    await reg.reload()
    assistant = reg.require("assistant")
    assert assistant.origin == "user" and assistant.instructions == "Be terse."


async def test_registered_python_skill_survives_reload_and_wins(registry: SkillRegistry) -> None:
    registry.register(make_python_skill("full-skill"))
    await registry.reload()
    assert registry.require("full-skill").origin == "python"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(make_python_skill("full-skill"))
    registry.register(make_python_skill("full-skill"), replace=True)
    registry.unregister("full-skill")
    assert registry.require("full-skill").origin == "user"


async def test_require_unknown_skill_is_not_found(registry: SkillRegistry) -> None:
    with pytest.raises(NotFound, match="no skill 'nope'"):
        registry.require("nope")


async def test_describe_is_json_ready_for_get_skills(registry: SkillRegistry) -> None:
    registry.register(make_python_skill())
    described = {d["id"]: d for d in registry.describe()}
    for entry in described.values():
        SkillInfo.model_validate(entry)
    py = described["py-tools"]
    assert py["kind"] == "tools" and py["origin"] == "python"
    assert py["tools"] == [
        {
            "name": "shout",
            "description": "Say it louder.",
            "permission": "run",
            "parameters": {
                "additionalProperties": False,
                "properties": {
                    "text": {"title": "Text", "type": "string"},
                    "times": {"default": 1, "title": "Times", "type": "integer"},
                },
                "required": ["text"],
                "type": "object",
            },
        }
    ]
    full = described["full-skill"]
    assert full["references"][1] == "references/checklist.md"
    assert full["color"] == "#123abc" and full["version"] == "2.1" and full["license"] == "Apache-2.0"
    assert described["echo"]["engine"] == "echo"
    assert list(described)[0] == "assistant"


async def test_tools_for_adds_the_reference_tool_when_a_skill_has_references(registry: SkillRegistry) -> None:
    py = make_python_skill()
    assert [t.name for t in registry.tools_for([py])] == ["shout"]
    with_refs = registry.tools_for([py, registry.require("full-skill")])
    assert [t.name for t in with_refs] == ["shout", "read_skill_reference"]


# --------------------------------------------------------------------------- read_skill_reference


async def read(registry: SkillRegistry, run_skills: tuple[str, ...] | None = None,
               **args: object) -> tuple[str, bool]:
    """Call `read_skill_reference` in a run with `run_skills` (by default every registered skill)."""
    skills = tuple(s.id for s in registry.list()) if run_skills is None else run_skills
    out = await registry.reference_tool.call(FakeToolContext(run_skills=skills), dict(args))
    return out.content, out.is_error


async def test_reference_tool_reads_listed_files(registry: SkillRegistry) -> None:
    assert registry.reference_tool.permission == "read"
    text, is_error = await read(registry, skill="full-skill", path="references/checklist.md")
    assert not is_error and text == "# Checklist\n\n1. Look before you answer.\n"
    text, is_error = await read(registry, skill="full-skill", path="references/nested/deep.md")
    assert (text, is_error) == ("deep reference\n", False)
    text, _ = await read(registry, skill="workflow-doctor", path="references/common-errors.md")
    assert "mat1 and mat2" in text


@pytest.mark.parametrize(
    "path",
    ["../role-skill/SKILL.md", "references/../../role-skill/SKILL.md", "/etc/passwd", "..", "references/../../../etc/hosts"],
)
async def test_reference_tool_refuses_path_traversal(registry: SkillRegistry, path: str) -> None:
    text, is_error = await read(registry, skill="full-skill", path=path)
    assert is_error
    assert "outside the skill's folder" in text


async def test_reference_tool_refuses_a_symlink_that_leaves_the_folder(registry: SkillRegistry, user_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    (user_dir / "full-skill" / "references" / "link.md").symlink_to(secret)
    text, is_error = await read(registry, skill="full-skill", path="references/link.md")
    assert is_error and "outside the skill's folder" in text
    assert "do not read" not in text


async def test_reference_tool_errors_are_readable(registry: SkillRegistry) -> None:
    text, is_error = await read(registry, skill="nope", path="x.md")
    assert is_error and "no skill 'nope'" in text and "full-skill" in text
    text, is_error = await read(registry, skill="full-skill", path="references/missing.md")
    assert is_error and "no file 'references/missing.md'" in text and "references/checklist.md" in text
    text, is_error = await read(registry, skill="full-skill", path="references/binary.png")
    assert is_error and "not a text file" in text
    text, is_error = await read(registry, skill="full-skill")
    assert is_error and "invalid arguments" in text


async def test_reference_tool_caps_size_and_pages_with_offset(registry: SkillRegistry, user_dir: Path) -> None:
    big = "abcdefghij" * (MAX_REFERENCE_READ_CHARS // 10 + 100)
    (user_dir / "full-skill" / "references" / "big.md").write_text(big)
    await registry.reload()  # a file is readable once listed
    first, is_error = await read(registry, skill="full-skill", path="references/big.md")
    assert not is_error
    assert first.startswith(big[:MAX_REFERENCE_READ_CHARS])
    assert f"[characters 0-{MAX_REFERENCE_READ_CHARS} of {len(big)}. Call again with offset={MAX_REFERENCE_READ_CHARS}" in first
    rest, _ = await read(registry, skill="full-skill", path="references/big.md", offset=MAX_REFERENCE_READ_CHARS)
    assert rest.startswith(big[MAX_REFERENCE_READ_CHARS:])
    assert f"of {len(big)}.]" in rest


@pytest.mark.parametrize("path", [".env", ".git/config", "references/../.env", "references/.secret.md", "notes.txt"])
async def test_reference_tool_reads_only_listed_files(registry: SkillRegistry, user_dir: Path, path: str) -> None:
    """A cloned skill folder may hold secrets: a file the skill's instructions do not list is refused."""
    folder = user_dir / "full-skill"
    (folder / ".git").mkdir()
    for name in (".env", ".git/config", "references/.secret.md", "notes.txt"):
        (folder / name).write_text("OPENAI_API_KEY=sk-live-secret\n")
    await registry.reload()
    assert registry.require("full-skill").references == [
        "references/binary.png", "references/checklist.md", "references/nested/deep.md", "FORMS.md"]
    text, is_error = await read(registry, skill="full-skill", path=path)
    assert is_error and "sk-live-secret" not in text
    assert f"no file '{path}' among the reference files of skill 'full-skill', the only files it can read: " \
           "references/binary.png, references/checklist.md, references/nested/deep.md, FORMS.md" in text


@pytest.mark.parametrize("path", ["./references/checklist.md", "references//checklist.md", "references\\checklist.md",
                                  "references/nested/../checklist.md"])
async def test_reference_tool_takes_a_listed_path_however_spelt(registry: SkillRegistry, path: str) -> None:
    text, is_error = await read(registry, skill="full-skill", path=path)
    assert (text, is_error) == ("# Checklist\n\n1. Look before you answer.\n", False)


async def test_reference_tool_reads_only_the_skills_of_its_run(registry: SkillRegistry) -> None:
    """The run's instructions list its own skills' references; other skills' files are not offered."""
    run = ("role-skill", "workflow-doctor")
    text, is_error = await read(registry, run, skill="full-skill", path="references/checklist.md")
    assert is_error and text == "no skill 'full-skill' among this reply's skills; skills with references: workflow-doctor"
    text, is_error = await read(registry, run, skill="workflow-doctor", path="references/common-errors.md")
    assert not is_error and "mat1 and mat2" in text


async def test_reference_tool_reads_no_further_than_its_cap(registry: SkillRegistry, user_dir: Path) -> None:
    """Reading stops at `MAX_REFERENCE_FILE_CHARS`, and the model is told the rest cannot be read."""
    huge = "x" * MAX_REFERENCE_FILE_CHARS + "THE END"
    (user_dir / "full-skill" / "references" / "huge.md").write_text(huge)
    await registry.reload()
    first, is_error = await read(registry, skill="full-skill", path="references/huge.md")
    assert not is_error and first.endswith(
        f"[characters 0-{MAX_REFERENCE_READ_CHARS} of the first {MAX_REFERENCE_FILE_CHARS} "
        f"(the file is longer; the rest cannot be read). Call again with offset={MAX_REFERENCE_READ_CHARS} for more.]")
    last, _ = await read(registry, skill="full-skill", path="references/huge.md", offset=MAX_REFERENCE_FILE_CHARS - 5)
    assert last == ("xxxxx\n\n[characters 999995-1000000 of the first 1000000 "
                    "(the file is longer; the rest cannot be read).]")


def test_a_dotfile_beside_skill_md_is_not_a_reference(tmp_path: Path) -> None:
    """`references/` left dotfiles out, the markdown beside SKILL.md did not (`.private.md`)."""
    folder = tmp_path / "dotted"
    (folder / "references").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: dotted\ndescription: d\n---\nbody\n")
    (folder / "references" / "a.md").write_text("a")
    (folder / ".private.md").write_text("secret")
    (folder / "NOTES.md").write_text("notes")
    assert load_skill_folder(folder).references == ["references/a.md", "NOTES.md"]
