"""``driftgate report``: does the second lot behave like the first? One self-contained page."""
