"""Provider registry: a config ``type`` names the class that speaks that wire format."""

from __future__ import annotations

from proxy.config import ProviderConfig
from proxy.http import upstream_client
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.gemini import GeminiProvider
from proxy.providers.ollama import OllamaProvider
from proxy.providers.openai import OpenAIProvider

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "gemini": GeminiProvider,
    "ollama": OllamaProvider,
    "anthropic": AnthropicProvider,
}


def build_provider(config: ProviderConfig) -> Provider:
    return PROVIDER_CLASSES[config.type](config, upstream_client(config))
