"""The use-cases: train, evaluate, parity, predict, inspect, demo, doctor, and opening an engine.

They sit above ``benchmarks``, ``exporters`` and ``engines`` and run them; the CLI calls one of
them per command.
"""
