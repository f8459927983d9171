"""The live lane: a program's events within minutes, between the nights (docs/live.md)."""
