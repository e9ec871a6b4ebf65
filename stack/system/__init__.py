"""The end-to-end run: the whole system as OS processes, under faults, load and bad input."""
