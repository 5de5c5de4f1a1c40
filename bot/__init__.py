"""gptrelay: chat platforms in front of an OpenAI-compatible model."""

__version__ = "0.1.0"
