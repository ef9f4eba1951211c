"""Built-in skills shipped with Opencode.

Each sub-folder holding a `SKILL.md` is a skill in the Agent Skills format, loaded as data by
`core.skills.SkillRegistry` (nothing here is imported for them). `comfyui/` is the one Python skill:
the ComfyUI tools, built at mount time by `build_comfyui_skill(adapter)` and registered by the service.
"""
