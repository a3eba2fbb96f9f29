"""The config floor: the typed schema (schema.py: every key, its default and check) and reading a
config (load.py: presets, `--set` overrides, paths). Everything above may import it; it imports
only camseg.errors."""
