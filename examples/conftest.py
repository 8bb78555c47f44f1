"""Examples run as users would: the plugin comes from its pytest11 entry point."""
