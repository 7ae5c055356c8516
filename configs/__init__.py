"""The shipped setups, one `get_config()` per file (installed as odediff.configs)."""
