"""Sending a night's outbox: the guard that releases it, the paced load slots, the presence
lookups they run beside, and settling what ended uncertain."""
