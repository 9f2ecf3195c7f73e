"""Instruction data (SAIL-Instruction2) and chain-of-thought / RL data: one message schema, the
normalisers that read the common dataset formats into it, rule checks, and the chain-of-thought
cleaning and reasoning measures. Stages that use them live in ``stages/``."""
