"""Where a chunk's output goes: the outbox (a real run) or a throwaway area (a dry run)."""
