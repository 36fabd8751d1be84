"""GoLlama: one OpenAI-compatible endpoint in front of many llama.cpp servers."""

__version__ = "0.1.0"
