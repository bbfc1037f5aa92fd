"""The Studio: a local web app over the workflow's own files.

    python -m workflow_scripts.studio [--config config/config.yaml] [--host 127.0.0.1] [--port 8000]

It reads `results/`, `logs/` and the config of the working directory and never writes
there. Pages: experiments, compare, live, chat, data, logs, report; JSON endpoints behind
each, and an OpenAI-compatible `/v1` API over the base models and trained adapters.
"""
