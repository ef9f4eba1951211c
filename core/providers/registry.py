"""Which `Provider` class speaks a profile's wire dialect, and building one for a profile.

`build_provider(profile, api_key, http, image_loader)` picks the class by `profile.kind`
(openai, anthropic, ollama). Kinds implemented elsewhere (the `echo` test provider, for one) are
passed in by the composition root through `extra_kinds`; nothing here is mutable at run time.
Imports protocol, errors, secrets and the providers package only.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import aiohttp

from ..errors import BadRequest
from ..protocol import ProviderProfile
from .anthropic import AnthropicProvider
from .base import ImageLoader, Provider
from .http import HttpProvider, RetryPolicy
from .ollama import OllamaProvider
from .openai import OpenAIProvider
from .profiles import ProviderProfiles

# (profile, api_key, http, image_loader) -> Provider
ProviderFactory = Callable[[ProviderProfile, "str | None", aiohttp.ClientSession, "ImageLoader | None"], Provider]

PROVIDER_CLASSES: Mapping[str, type[HttpProvider]] = MappingProxyType(
    {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "ollama": OllamaProvider}
)


def build_provider(
    profile: ProviderProfile,
    api_key: str | None,
    http: aiohttp.ClientSession,
    image_loader: ImageLoader | None = None,
    *,
    retry: RetryPolicy | None = None,
    extra_kinds: Mapping[str, ProviderFactory] | None = None,
) -> Provider:
    """A provider for `profile`; `retry` overrides the policy from `profile.extra`."""
    if extra_kinds and profile.kind in extra_kinds:
        return extra_kinds[profile.kind](profile, api_key, http, image_loader)
    cls = PROVIDER_CLASSES.get(profile.kind)
    if cls is None:
        raise BadRequest(f"no provider implementation for kind {profile.kind!r}", details={"kind": profile.kind})
    return cls(profile, api_key, http, image_loader, retry=retry)


async def provider_for(
    name: str,
    profiles: ProviderProfiles,
    http: aiohttp.ClientSession,
    image_loader: ImageLoader | None = None,
    *,
    retry: RetryPolicy | None = None,
    extra_kinds: Mapping[str, ProviderFactory] | None = None,
) -> Provider:
    """Look up profile `name` and its key, and build its provider (`NotFound` if unknown)."""
    profile = await profiles.stored(name)
    return build_provider(
        profile, profiles.api_key(profile), http, image_loader, retry=retry, extra_kinds=extra_kinds
    )
