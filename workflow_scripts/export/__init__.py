"""Exports of trained adapters for deployment (rules/export.smk, docs/export.md): a merged model
directory, GGUF files for llama.cpp and Ollama, and vLLM-ready adapters, each checked."""
