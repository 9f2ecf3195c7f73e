"""Model engines: vllm (offline), openai (any compatible server), hf (transformers), clip (open_clip)."""
