"""Shared vocabulary of every stage: taxa and lineages, caption text types and prompt templates, the tokenizer, constants."""
