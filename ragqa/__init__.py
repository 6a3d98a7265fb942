"""ragqa: offline-first dermatology question answering with retrieval and LoRA/QLoRA adapters."""

__version__ = "0.1.0"
