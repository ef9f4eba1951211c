import opencode_agent


def test_package_imports_without_comfyui() -> None:
    assert opencode_agent.WEB_DIRECTORY == "./web/dist"
