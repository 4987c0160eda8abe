"""The GPU side: the style-transfer engine and the adapters that drive it."""
